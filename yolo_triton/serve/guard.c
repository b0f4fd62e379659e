/* Preloaded into tritonserver (and perf_analyzer) by the launcher: LD_PRELOAD=<this .so>.
 *
 * 1. Request shapes are checked at the front door. Triton 2.51 accepts any int64 in a
 *    variable (-1) dimension, including negative ones and ones whose product overflows to the
 *    byte size sent (IMAGE [1, 4611686018427387905, 4, 3] with 12 bytes). The python backend's
 *    stub then builds a NumPy array for the input before any model code runs, NumPy raises, and
 *    the stub dies ("terminate called after throwing ... negative dimensions are not allowed").
 *    No python model can defend itself, so every input a client adds to a request passes
 *    through TRITONSERVER_InferenceRequestAddInput, interposed here: a negative dimension, a
 *    rank NumPy cannot hold, or an element count past YOLO_GUARD_MAX_ELEMENTS is refused with
 *    INVALID_ARG naming the tensor, before Triton stores the request. The ensembles' internal
 *    steps do not come through this API; only what clients send does.
 *
 * 2. Secrets stay out of the process arguments. An argument containing @@/path/to/file@@ has
 *    that token replaced by the file's first line before main() runs. /proc/<pid>/cmdline (ps)
 *    keeps showing the token: only the argv pointer is swapped, not the memory ps reads. This
 *    library leaves LD_PRELOAD, so the python stubs Triton starts do not load it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct TRITONSERVER_Error TRITONSERVER_Error;
typedef struct TRITONSERVER_InferenceRequest TRITONSERVER_InferenceRequest;
enum { TRITONSERVER_ERROR_INVALID_ARG = 3 }; /* tritonserver.h: UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG */

typedef TRITONSERVER_Error* (*add_input_fn)(
    TRITONSERVER_InferenceRequest*, const char*, int, const int64_t*, uint64_t);
typedef TRITONSERVER_Error* (*error_new_fn)(int, const char*);

#define MAX_RANK 16                                   /* NumPy 1 holds 32 dims; no model here has over 5 */
static const int64_t DEFAULT_MAX_ELEMENTS = INT64_C(1) << 32; /* 4 Gi elements: past any request gRPC carries */

static int64_t max_elements(void)
{
  static int64_t cached = 0;
  if (cached == 0) {
    const char* env = getenv("YOLO_GUARD_MAX_ELEMENTS");
    long long v = env ? atoll(env) : 0;
    cached = v > 0 ? (int64_t)v : DEFAULT_MAX_ELEMENTS;
  }
  return cached;
}

static TRITONSERVER_Error* refuse(const char* fmt, const char* name, int64_t value)
{
  static error_new_fn error_new = NULL;
  char msg[512];
  if (error_new == NULL) {
    error_new = (error_new_fn)dlsym(RTLD_DEFAULT, "TRITONSERVER_ErrorNew");
  }
  snprintf(msg, sizeof msg, fmt, name ? name : "?", value);
  return error_new(TRITONSERVER_ERROR_INVALID_ARG, msg);
}

TRITONSERVER_Error* TRITONSERVER_InferenceRequestAddInput(
    TRITONSERVER_InferenceRequest* request, const char* name, int datatype, const int64_t* shape,
    uint64_t dim_count)
{
  static add_input_fn real = NULL;
  if (real == NULL) {
    real = (add_input_fn)dlsym(RTLD_NEXT, "TRITONSERVER_InferenceRequestAddInput");
  }
  if (dim_count > MAX_RANK) {
    return refuse("input '%s': rank %" PRId64 " is more than this server accepts (16)", name, (int64_t)dim_count);
  }
  int64_t elements = 1;
  const int64_t limit = max_elements();
  for (uint64_t i = 0; i < dim_count; ++i) {
    if (shape[i] < 0) {
      return refuse("input '%s': dimension %" PRId64 " is negative; every dimension must be 0 or more", name,
                    shape[i]);
    }
    if (shape[i] > 0 && elements > limit / shape[i]) {
      return refuse("input '%s': its shape holds more elements than this server accepts (dimension %" PRId64
                    " overflows the limit); send a smaller tensor", name, shape[i]);
    }
    elements *= shape[i] > 0 ? shape[i] : 1;
  }
  return real(request, name, datatype, shape, dim_count);
}

/* The first line of `path`, malloc'd, or NULL. */
static char* read_secret(const char* path)
{
  FILE* f = fopen(path, "r");
  if (f == NULL) {
    return NULL;
  }
  char buf[4096];
  char* line = fgets(buf, sizeof buf, f);
  fclose(f);
  if (line == NULL) {
    return NULL;
  }
  buf[strcspn(buf, "\r\n")] = '\0';
  return strdup(buf);
}

/* `arg` with every @@path@@ replaced by that file's first line; NULL when it has no token. */
static char* substitute(const char* arg)
{
  const char* open = strstr(arg, "@@");
  if (open == NULL) {
    return NULL;
  }
  size_t cap = strlen(arg) + 4096 + 1;
  char* out = malloc(cap);
  size_t len = 0;
  const char* rest = arg;
  while ((open = strstr(rest, "@@")) != NULL) {
    const char* close = strstr(open + 2, "@@");
    if (close == NULL) {
      break;
    }
    char path[4096];
    size_t plen = (size_t)(close - open - 2);
    if (plen >= sizeof path) {
      break;
    }
    memcpy(path, open + 2, plen);
    path[plen] = '\0';
    char* secret = read_secret(path);
    if (secret == NULL) {
      fprintf(stderr, "yolo-triton guard: cannot read the secret file %s\n", path);
      exit(2);
    }
    size_t need = len + (size_t)(open - rest) + strlen(secret) + strlen(close + 2) + 1;
    if (need > cap) {
      cap = need * 2;
      out = realloc(out, cap);
    }
    memcpy(out + len, rest, (size_t)(open - rest));
    len += (size_t)(open - rest);
    memcpy(out + len, secret, strlen(secret));
    len += strlen(secret);
    free(secret);
    rest = close + 2;
  }
  size_t tail = strlen(rest);
  if (len + tail + 1 > cap) {
    out = realloc(out, len + tail + 1);
  }
  memcpy(out + len, rest, tail + 1);
  return out;
}

/* LD_PRELOAD without this library, so that the processes Triton starts (the python stubs) run
 * without it; any other preloaded library stays. */
static void drop_self_from_preload(void)
{
  const char* preload = getenv("LD_PRELOAD");
  if (preload == NULL) {
    return;
  }
  char* kept = calloc(strlen(preload) + 1, 1);
  char* copy = strdup(preload);
  char* save = NULL;
  for (char* item = strtok_r(copy, ": ", &save); item != NULL; item = strtok_r(NULL, ": ", &save)) {
    if (strstr(item, "yolo-triton-guard") == NULL) {
      if (kept[0] != '\0') {
        strcat(kept, ":");
      }
      strcat(kept, item);
    }
  }
  if (kept[0] == '\0') {
    unsetenv("LD_PRELOAD");
  } else {
    setenv("LD_PRELOAD", kept, 1);
  }
  free(copy);
  free(kept);
}

__attribute__((constructor)) static void guard_init(int argc, char** argv, char** envp)
{
  (void)envp;
  for (int i = 1; i < argc; ++i) {
    char* replaced = substitute(argv[i]);
    if (replaced != NULL) {
      argv[i] = replaced; /* main() sees the secret; /proc/<pid>/cmdline still shows the token */
    }
  }
  drop_self_from_preload();
}
