/*
 * A test double of the CUDA driver library, for checking the gpu crate's FFI plumbing on machines without a
 * GPU: symbol names and signatures, pointer and size passing, JIT option arrays, parameter probing, error
 * names, and the lost-context path. It is NOT a CUDA implementation: "device memory" is host memory, work
 * runs at once on the calling thread, and the only kernels it can "run" are the two the tests load
 * (vec_add, executed on the host from the real argument list, and always_trap, which sets a sticky error).
 *
 * Like the real driver it validates what it is given: a copy or memset outside an allocation is rejected with
 * CUDA_ERROR_INVALID_VALUE and counted, so the tests can assert the crate never sends one.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;

enum {
    OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, INVALID_DEVICE = 101, INVALID_PTX = 218, INVALID_HANDLE = 400,
    NOT_FOUND = 500, NOT_READY = 600, ALREADY_REGISTERED = 712, NOT_REGISTERED = 713, LAUNCH_FAILED = 719
};

#define BUDGET_BYTES (64ull << 20)
#define MAX_ALLOCS 256
#define MAX_REGS 64

static CUresult sticky = OK;
static int ctx_refs = 0;
static int ctx_token;
static __thread void *current_ctx = 0;
static size_t allocated = 0;
static struct { char *p; size_t n; int host; } allocs[MAX_ALLOCS];
static struct { char *p; size_t n; unsigned flags; } regs[MAX_REGS];

/* Counters the tests read through mock_* functions. */
static int rejected_ranges = 0;
static int launches = 0;

int mock_rejected_ranges(void) { return rejected_ranges; }
int mock_launches(void) { return launches; }
int mock_ctx_refs(void) { return ctx_refs; }
size_t mock_allocated(void) { return allocated; }

#define STICKY() do { if (sticky) return sticky; } while (0)

static int track(char *p, size_t n, int host) {
    for (int i = 0; i < MAX_ALLOCS; i++)
        if (!allocs[i].p) { allocs[i].p = p; allocs[i].n = n; allocs[i].host = host; return 1; }
    return 0;
}

static int untrack(char *p, int host) {
    for (int i = 0; i < MAX_ALLOCS; i++)
        if (allocs[i].p == p && allocs[i].host == host) { allocs[i].p = 0; return 1; }
    return 0;
}

/* Does [p, p+n) lie in one device allocation, or in a DEVICEMAP registration? */
static int device_range_ok(CUdeviceptr d, size_t n) {
    char *p = (char *)(uintptr_t)d;
    for (int i = 0; i < MAX_ALLOCS; i++)
        if (allocs[i].p && !allocs[i].host && p >= allocs[i].p && p + n <= allocs[i].p + allocs[i].n) return 1;
    for (int i = 0; i < MAX_REGS; i++)
        if (regs[i].p && (regs[i].flags & 2) && p >= regs[i].p && p + n <= regs[i].p + regs[i].n) return 1;
    rejected_ranges++;
    return 0;
}

static const struct { int code; const char *name; const char *text; } names[] = {
    {OK, "CUDA_SUCCESS", "no error"},
    {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {ALREADY_REGISTERED, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED", "part or all of the requested memory range is already mapped"},
    {NOT_REGISTERED, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED", "pointer does not correspond to a registered memory region"},
    {LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
};

CUresult cuGetErrorName(CUresult e, const char **s) {
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].code == e) { *s = names[i].name; return OK; }
    *s = 0;
    return INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult e, const char **s) {
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i].code == e) { *s = names[i].text; return OK; }
    *s = 0;
    return INVALID_VALUE;
}

CUresult cuInit(unsigned flags) { return flags ? INVALID_VALUE : OK; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return OK; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return OK; }
CUresult cuDeviceGet(CUdevice *d, int ordinal) { if (ordinal != 0) return INVALID_DEVICE; *d = 0; return OK; }

CUresult cuDeviceGetName(char *name, int len, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    if (len <= 0) return INVALID_VALUE;
    strncpy(name, "faascale mock device", (size_t)len - 1);
    name[len - 1] = 0;
    return OK;
}

CUresult cuDeviceGetAttribute(int *v, int attrib, CUdevice d) {
    static const int table[][2] = {
        {1, 1024}, {2, 1024}, {3, 1024}, {4, 64}, {5, 2147483647}, {6, 65535}, {7, 65535}, {8, 49152},
        {10, 32}, {16, 4}, {19, 1}, {75, 9}, {76, 0}, {97, 232448}, {99, 1}, {113, 1},
    };
    if (d != 0) return INVALID_DEVICE;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (table[i][0] == attrib) { *v = table[i][1]; return OK; }
    return INVALID_VALUE;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice d) { if (d) return INVALID_DEVICE; *bytes = BUDGET_BYTES; return OK; }

CUresult cuDeviceGetPCIBusId(char *s, int len, CUdevice d) {
    if (d != 0) return INVALID_DEVICE;
    if (len < 13) return INVALID_VALUE;
    strcpy(s, "0000:00:00.0");
    return OK;
}

CUresult cuDevicePrimaryCtxRetain(void **ctx, CUdevice d) { if (d) return INVALID_DEVICE; ctx_refs++; *ctx = &ctx_token; return OK; }
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice d) { if (d || ctx_refs == 0) return INVALID_VALUE; ctx_refs--; return OK; }
CUresult cuCtxSetCurrent(void *ctx) { if (ctx && ctx != &ctx_token) return INVALID_VALUE; current_ctx = ctx; return OK; }
CUresult cuCtxGetCurrent(void **ctx) { *ctx = current_ctx; return OK; }

#define NEED_CTX() do { if (current_ctx != &ctx_token || ctx_refs == 0) return 201; } while (0)

CUresult cuCtxSynchronize(void) { NEED_CTX(); return sticky; }

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    STICKY(); NEED_CTX();
    *free_bytes = BUDGET_BYTES - allocated;
    *total = BUDGET_BYTES;
    return OK;
}

CUresult cuMemAlloc_v2(CUdeviceptr *d, size_t n) {
    STICKY(); NEED_CTX();
    if (n == 0) return INVALID_VALUE;
    if (n > BUDGET_BYTES - allocated) return OUT_OF_MEMORY;
    char *p = malloc(n);
    if (!p || !track(p, n, 0)) { free(p); return OUT_OF_MEMORY; }
    allocated += n;
    *d = (CUdeviceptr)(uintptr_t)p;
    return OK;
}

CUresult cuMemFree_v2(CUdeviceptr d) {
    STICKY(); NEED_CTX();
    char *p = (char *)(uintptr_t)d;
    for (int i = 0; i < MAX_ALLOCS; i++)
        if (allocs[i].p == p && !allocs[i].host) { allocated -= allocs[i].n; allocs[i].p = 0; free(p); return OK; }
    return INVALID_VALUE;
}

CUresult cuMemHostAlloc(void **pp, size_t n, unsigned flags) {
    STICKY(); NEED_CTX();
    if (n == 0 || (flags & ~7u)) return INVALID_VALUE;
    void *p = 0;
    if (posix_memalign(&p, 4096, n) || !track(p, n, 1)) { free(p); return OUT_OF_MEMORY; }
    memset(p, 0xAB, n); /* not zeroed, like the real thing: the crate must zero it */
    *pp = p;
    return OK;
}

CUresult cuMemFreeHost(void *p) { STICKY(); if (!untrack(p, 1)) return INVALID_VALUE; free(p); return OK; }

CUresult cuMemHostRegister_v2(void *p, size_t n, unsigned flags) {
    STICKY(); NEED_CTX();
    if (!p || n == 0 || (flags & ~15u)) return INVALID_VALUE;
    for (int i = 0; i < MAX_REGS; i++)
        if (regs[i].p && (char *)p < regs[i].p + regs[i].n && (char *)p + n > regs[i].p) return ALREADY_REGISTERED;
    for (int i = 0; i < MAX_REGS; i++)
        if (!regs[i].p) { regs[i].p = p; regs[i].n = n; regs[i].flags = flags; return OK; }
    return OUT_OF_MEMORY;
}

CUresult cuMemHostUnregister(void *p) {
    STICKY(); NEED_CTX();
    for (int i = 0; i < MAX_REGS; i++)
        if (regs[i].p == p) { regs[i].p = 0; return OK; }
    return NOT_REGISTERED;
}

CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *d, void *p, unsigned flags) {
    STICKY(); NEED_CTX();
    if (flags) return INVALID_VALUE;
    for (int i = 0; i < MAX_REGS; i++)
        if (regs[i].p && (regs[i].flags & 2) && (char *)p >= regs[i].p && (char *)p < regs[i].p + regs[i].n) {
            *d = (CUdeviceptr)(uintptr_t)p;
            return OK;
        }
    return INVALID_VALUE;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void *h, size_t n, void *s) {
    STICKY(); NEED_CTX(); (void)s;
    if (!device_range_ok(d, n)) return INVALID_VALUE;
    memcpy((void *)(uintptr_t)d, h, n);
    return OK;
}

CUresult cuMemcpyDtoHAsync_v2(void *h, CUdeviceptr d, size_t n, void *s) {
    STICKY(); NEED_CTX(); (void)s;
    if (!device_range_ok(d, n)) return INVALID_VALUE;
    memcpy(h, (void *)(uintptr_t)d, n);
    return OK;
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void *s) {
    STICKY(); NEED_CTX(); (void)s;
    if (!device_range_ok(dst, n) || !device_range_ok(src, n)) return INVALID_VALUE;
    memmove((void *)(uintptr_t)dst, (void *)(uintptr_t)src, n);
    return OK;
}

CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void *s) {
    STICKY(); NEED_CTX(); (void)s;
    if (!device_range_ok(d, n)) return INVALID_VALUE;
    memset((void *)(uintptr_t)d, v, n);
    return OK;
}

CUresult cuMemsetD32Async(CUdeviceptr d, unsigned v, size_t n, void *s) {
    STICKY(); NEED_CTX(); (void)s;
    if (d % 4 || !device_range_ok(d, n * 4)) return INVALID_VALUE;
    unsigned *p = (unsigned *)(uintptr_t)d;
    for (size_t i = 0; i < n; i++) p[i] = v;
    return OK;
}

CUresult cuStreamCreate(void **s, unsigned flags) { STICKY(); NEED_CTX(); if (flags > 1) return INVALID_VALUE; *s = malloc(8); return OK; }
CUresult cuStreamDestroy_v2(void *s) { NEED_CTX(); free(s); return OK; }
CUresult cuStreamSynchronize(void *s) { (void)s; NEED_CTX(); return sticky; }
CUresult cuStreamWaitEvent(void *s, void *e, unsigned flags) { STICKY(); (void)s; (void)e; return flags ? INVALID_VALUE : OK; }

typedef struct { unsigned flags; int recorded; double t_ms; } Event;

CUresult cuEventCreate(void **e, unsigned flags) {
    STICKY(); NEED_CTX();
    if (flags & ~7u) return INVALID_VALUE;
    Event *ev = calloc(1, sizeof *ev);
    ev->flags = flags;
    *e = ev;
    return OK;
}

CUresult cuEventDestroy_v2(void *e) { free(e); return OK; }

CUresult cuEventRecord(void *e, void *s) {
    STICKY(); (void)s;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    Event *ev = e;
    ev->recorded = 1;
    ev->t_ms = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
    return OK;
}

CUresult cuEventQuery(void *e) { STICKY(); return ((Event *)e)->recorded ? OK : NOT_READY; }
CUresult cuEventSynchronize(void *e) { (void)e; return sticky; }

/* Only the CUDA 13 name is exported, as a CUDA 13 driver's header maps it. */
CUresult cuEventElapsedTime_v2(float *ms, void *a, void *b) {
    STICKY();
    Event *x = a, *y = b;
    if ((x->flags & 2) || (y->flags & 2)) return INVALID_HANDLE;
    if (!x->recorded || !y->recorded) return NOT_READY;
    *ms = (float)(y->t_ms - x->t_ms);
    return OK;
}

/* ---- modules: a module keeps its PTX text; a function is an .entry found in it ---- */

typedef struct { char *text; } Module;
typedef struct { char name[64]; int nparams; size_t sizes[16]; int max_dyn_shared; } Function;

CUresult cuModuleLoadDataEx(void **m, const void *image, unsigned n, int *options, void **values) {
    STICKY(); NEED_CTX();
    const char *text = image;
    if (strstr(text, "bogus")) {
        const char *msg = "ptxas application ptx input, line 6; error   : Unknown instruction 'bogus'";
        for (unsigned i = 0; i < n; i++) {
            if (options[i] != 5) continue; /* CU_JIT_ERROR_LOG_BUFFER */
            for (unsigned j = 0; j < n; j++) {
                if (options[j] != 6) continue; /* CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, in and out */
                size_t cap = (size_t)(uintptr_t)values[j];
                size_t len = strlen(msg) + 1 < cap ? strlen(msg) + 1 : cap;
                if (len) { memcpy(values[i], msg, len); ((char *)values[i])[len - 1] = 0; }
                values[j] = (void *)(uintptr_t)len;
            }
        }
        return INVALID_PTX;
    }
    if (!strstr(text, ".version")) return INVALID_PTX;
    Module *mod = malloc(sizeof *mod);
    mod->text = strdup(text);
    *m = mod;
    return OK;
}

CUresult cuModuleUnload(void *m) { STICKY(); Module *mod = m; free(mod->text); free(mod); return OK; }

CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
    STICKY();
    Module *mod = m;
    char pattern[80];
    snprintf(pattern, sizeof pattern, ".entry %s(", name);
    const char *at = strstr(mod->text, pattern);
    if (!at || strlen(name) >= 64) return NOT_FOUND;
    Function *fn = calloc(1, sizeof *fn);
    strcpy(fn->name, name);
    fn->max_dyn_shared = 49152;
    const char *end = strchr(at, ')');
    for (const char *p = strstr(at, ".param"); p && p < end && fn->nparams < 16; p = strstr(p + 1, ".param")) {
        fn->sizes[fn->nparams++] = strncmp(p, ".param .u32", 11) == 0 ? 4 : 8;
    }
    *f = fn;
    return OK;
}

CUresult cuFuncGetAttribute(int *v, int attrib, void *f) {
    STICKY();
    Function *fn = f;
    switch (attrib) {
    case 0: *v = 1024; return OK;
    case 1: *v = 0; return OK;
    case 4: *v = 12; return OK;
    case 8: *v = fn->max_dyn_shared; return OK;
    default: return INVALID_VALUE;
    }
}

CUresult cuFuncSetAttribute(void *f, int attrib, int value) {
    STICKY();
    if (attrib != 8 || value < 0 || value > 232448) return INVALID_VALUE;
    ((Function *)f)->max_dyn_shared = value;
    return OK;
}

CUresult cuFuncGetParamInfo(void *f, size_t index, size_t *offset, size_t *size) {
    STICKY();
    Function *fn = f;
    if (index >= (size_t)fn->nparams) return INVALID_VALUE;
    size_t off = 0;
    for (size_t i = 0; i < index; i++) off += fn->sizes[i];
    *offset = off;
    if (size) *size = fn->sizes[index];
    return OK;
}

CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *s, void **params, void **extra) {
    STICKY(); NEED_CTX(); (void)s;
    Function *fn = f;
    if (extra || !gx || !gy || !gz || !bx || !by || !bz || (unsigned long long)bx * by * bz > 1024) return INVALID_VALUE;
    if (shared > (unsigned)fn->max_dyn_shared) return INVALID_VALUE;
    launches++;
    if (strcmp(fn->name, "always_trap") == 0) { sticky = LAUNCH_FAILED; return OK; } /* reported later */
    if (strcmp(fn->name, "vec_add") == 0) {
        const float *a = (const float *)(uintptr_t)*(CUdeviceptr *)params[0];
        const float *b = (const float *)(uintptr_t)*(CUdeviceptr *)params[1];
        float *c = (float *)(uintptr_t)*(CUdeviceptr *)params[2];
        unsigned n = *(unsigned *)params[3];
        if (!device_range_ok((CUdeviceptr)(uintptr_t)a, (size_t)n * 4) ||
            !device_range_ok((CUdeviceptr)(uintptr_t)b, (size_t)n * 4) ||
            !device_range_ok((CUdeviceptr)(uintptr_t)c, (size_t)n * 4)) {
            sticky = 700; /* CUDA_ERROR_ILLEGAL_ADDRESS: what a real out-of-range kernel would cause */
            return OK;
        }
        unsigned long long threads = (unsigned long long)gx * gy * gz * bx * by * bz;
        for (unsigned long long i = 0; i < threads && i < n; i++) c[i] = a[i] + b[i];
        return OK;
    }
    return INVALID_HANDLE;
}
