"""The shortest client: one image through `yolov8n` with tritonclient alone, no project code.

    python clients/grpc_client.py IMAGE [HOST:PORT]

What any language's client does: send the decoded BGR pixels as UINT8 [1, H, W, 3], read back
BOXES (x1, y1, x2, y2 in the image's pixels), SCORES, CLASSES and NUM_DETECTIONS; the class names
are in the model config's `names` parameter. `yolo-triton detect` is the full client (folders,
videos, retries, shared memory, JSON and annotated images).
"""

import json
import sys

import cv2
import numpy as np
import tritonclient.grpc as grpcclient

image_path = sys.argv[1]
url = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:8001"
image = cv2.imread(image_path, cv2.IMREAD_COLOR)  # BGR, as the server expects
if image is None:
    sys.exit(f"{image_path}: not an image OpenCV can read")

client = grpcclient.InferenceServerClient(url)
names = json.loads(client.get_model_config("yolov8n", as_json=True)["config"]["parameters"]["names"]["string_value"])
pixels = grpcclient.InferInput("IMAGE", [1, *image.shape], "UINT8")
pixels.set_data_from_numpy(image[None])
result = client.infer("yolov8n", [pixels])

n = int(result.as_numpy("NUM_DETECTIONS")[0, 0])
boxes, scores, classes = (result.as_numpy(k)[0, :n] for k in ("BOXES", "SCORES", "CLASSES"))
for box, score, cls in zip(boxes, scores, classes):
    print(f"{names[cls]:>12} {score:.2f}  " + " ".join(f"{v:.0f}" for v in np.round(box)))
print(f"{n} detections in {image_path} ({image.shape[1]}x{image.shape[0]})")
