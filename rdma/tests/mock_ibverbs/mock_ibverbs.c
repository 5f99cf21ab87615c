/*
 * A test double of libibverbs with one soft RDMA device, for running the rdma crate's verbs layer end to end
 * on machines without RDMA hardware. Compiled by rdma/tests/verbs_mock.rs with the system C compiler and loaded
 * through rdma::verbs::sys::lib_from in place of libibverbs.so.1.
 *
 * Struct layouts come from rdma-core's own <infiniband/verbs.h>, and the device context's `ops` table points at
 * this file's post_send / post_recv / poll_cq exactly as a real provider's does, so the crate's rewritten
 * inline verbs are exercised as they would be against mlx5 or rxe.
 *
 * What is emulated (reliable connected QPs only, in one process):
 *  - one device "mock0" with five ports: 1 and 4 = ACTIVE RoCE (GID tables: RoCE v1 and v2 link-local, RoCE v1
 *    and v2 IPv4-mapped 10.0.0.1 and 10.0.0.2; active MTU 1024 and 2048), 2 and 5 = ACTIVE InfiniBand (LIDs
 *    0x17 and 0x18), 3 = DOWN RoCE with an empty GID table;
 *  - ibv_modify_qp's state machine RESET -> INIT -> RTR -> RTS (plus -> ERR and -> RESET from any state) with
 *    the required and optional attribute masks of the ibv_modify_qp man page / the kernel's qp_state_table,
 *    and range checks on the values (EINVAL otherwise);
 *  - RDMA WRITE, RDMA WRITE WITH IMM and RDMA READ between two QPs of this process: the sender's address
 *    vector (GID or LID), destination QP number and PSN must match the receiver's port, QP number and expected
 *    PSN, and the receiver's must point back; lkey, rkey, bounds and access flags are checked on every
 *    scatter/gather entry and remote range; a WRITE WITH IMM consumes a posted receive and completes on the
 *    receiver with IBV_WC_RECV_RDMA_WITH_IMM and the immediate in network order;
 *  - error semantics: remote access error (bad rkey, range or permission) puts both QPs in ERR; a missing
 *    receive makes the requester wait the responder's min_rnr_timer (real time, with the double's lock
 *    released so the responder can post receives) up to rnr_retry times (7: forever), then complete with
 *    IBV_WC_RNR_RETRY_EXC_ERR; an unreachable peer gives IBV_WC_RETRY_EXC_ERR at once; a QP in ERR flushes
 *    its receives and everything posted later with IBV_WC_WR_FLUSH_ERR; error completions are generated
 *    even for unsignaled requests, and their opcode is left undefined (an out-of-range value);
 *  - queue depths: a send slot is freed when its completion (or the next signaled one, for unsignaled
 *    requests) is polled, a receive slot when its completion is polled; posting beyond the granted depth is
 *    ENOMEM; granted depths are rounded up to powers of two as mlx5 does; a completion that finds its CQ
 *    full overruns it: the CQ then fails every poll and the QP goes to ERR.
 *
 * What is NOT: transport timing (a request completes inside ibv_post_send, which only blocks for RNR waits;
 * an unreachable peer fails at once instead of after timeout x retry_cnt, so a peer must be at RTR before it is
 * written to, which is stricter than hardware), SEND, atomics, SRQs, completion channels, other QP types,
 * several processes. Objects live in static pools and are never unmapped, so a handle used
 * after its destroy call is detected and counted instead of touching freed memory.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>

/* verbs.h turns these two into macros over inlines; the exported symbols are what a dlsym finds. */
#undef ibv_query_port
#undef ibv_reg_mr

#define MAX_CTX 8
#define MAX_PD 32
#define MAX_MR 512
#define MAX_CQ 64
#define MAX_QP 128
#define MAX_LISTS 8
#define PORTS 5
#define GIDS 4
#define MAX_CQE 65535
#define MAX_QP_WR 16384
#define MAX_SGE 4
#define MAX_RD_ATOM 16
#define MAX_INLINE 256
#define MAX_MSG_BYTES 0x80000000u
#define WC_OPCODE_UNDEFINED 0x7f /* what an error completion's opcode reads as */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- counters the tests read ---------------------------------------------------------------------------- */

static int live_objects;       /* device lists, contexts, PDs, MRs, CQs and QPs not yet released */
static int stale_handles;      /* calls naming an object that was already destroyed (or never existed) */
static int rejected_posts;     /* post_send / post_recv calls refused with an errno */
static int rejected_modifies;  /* modify_qp calls refused with EINVAL */
static int error_completions;  /* completions with a status other than success */
static int cq_overruns;        /* completions that found their CQ full */
static int wrong_ops;          /* calls through an ops slot this provider does not implement */
static int writes_delivered;   /* RDMA WRITEs (with or without immediate) that landed */
static int rnr_waits;          /* RNR timer waits a requester went through */
static int reads_delivered;
static long long bytes_moved;

int mock_live_objects(void) { return live_objects; }
int mock_stale_handles(void) { return stale_handles; }
int mock_rejected_posts(void) { return rejected_posts; }
int mock_rejected_modifies(void) { return rejected_modifies; }
int mock_error_completions(void) { return error_completions; }
int mock_cq_overruns(void) { return cq_overruns; }
int mock_wrong_ops(void) { return wrong_ops; }
int mock_writes_delivered(void) { return writes_delivered; }
int mock_reads_delivered(void) { return reads_delivered; }
int mock_rnr_waits(void) { return rnr_waits; }
int mock_kib_moved(void) { return (int)(bytes_moved >> 10); }

/* ---- the device and its ports --------------------------------------------------------------------------- */

static struct ibv_device device = {
    .node_type = IBV_NODE_CA,
    .transport_type = IBV_TRANSPORT_IB,
    .name = "mock0",
    .dev_name = "uverbs0",
    .dev_path = "/sys/class/infiniband_verbs/uverbs0",
    .ibdev_path = "/sys/class/infiniband/mock0",
};

struct port {
    enum ibv_port_state state;
    enum ibv_mtu max_mtu, active_mtu;
    uint16_t lid;
    uint8_t link_layer;
    uint16_t pkey_tbl_len;
    struct { uint8_t raw[16]; enum ibv_gid_type type; } gid[GIDS];
};

#define LINK_LOCAL(x) {0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, x}
#define V4_MAPPED(x) {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, x}
#define ROCE_GIDS(x)                                                                                       \
    {{LINK_LOCAL(x), IBV_GID_TYPE_ROCE_V1}, {LINK_LOCAL(x), IBV_GID_TYPE_ROCE_V2},                           \
     {V4_MAPPED(x), IBV_GID_TYPE_ROCE_V1}, {V4_MAPPED(x), IBV_GID_TYPE_ROCE_V2}}
#define IB_GID(x) {{{0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x00, 0x02, 0xc9, 0x03, 0x00, 0xaa, 0xbb, x}, IBV_GID_TYPE_IB}}

/* Two ports of each link layer, so that a QP addressing its own port instead of the peer's is caught. */
static const struct port ports[PORTS] = {
    {IBV_PORT_ACTIVE, IBV_MTU_4096, IBV_MTU_1024, 0, IBV_LINK_LAYER_ETHERNET, 1, ROCE_GIDS(1)},
    {IBV_PORT_ACTIVE, IBV_MTU_4096, IBV_MTU_4096, 0x17, IBV_LINK_LAYER_INFINIBAND, 128, IB_GID(0x17)},
    {IBV_PORT_DOWN, IBV_MTU_4096, IBV_MTU_1024, 0, IBV_LINK_LAYER_ETHERNET, 1, {{{0}, 0}}},
    {IBV_PORT_ACTIVE, IBV_MTU_4096, IBV_MTU_2048, 0, IBV_LINK_LAYER_ETHERNET, 1, ROCE_GIDS(2)},
    {IBV_PORT_ACTIVE, IBV_MTU_4096, IBV_MTU_4096, 0x18, IBV_LINK_LAYER_INFINIBAND, 128, IB_GID(0x18)},
};

static int gid_tbl_len(const struct port *p) { return p->link_layer == IBV_LINK_LAYER_INFINIBAND ? 1 : GIDS; }

static int gid_empty(const uint8_t *raw) {
    static const uint8_t zero[16];
    return memcmp(raw, zero, 16) == 0;
}

/* ---- object pools --------------------------------------------------------------------------------------- */

struct mctx { struct ibv_context c; int used; int children; };
struct mpd { struct ibv_pd pd; int used; struct mctx *ctx; int users; };
struct mmr { struct ibv_mr mr; int used; struct mpd *pd; int access; };

struct cqe { struct ibv_wc wc; struct mqp *qp; int sq_slots, rq_slots; };
struct mcq {
    struct ibv_cq cq;
    int used, users, overrun;
    struct mctx *ctx;
    int cap, head, count;
    struct cqe *ring;
};

struct recv { uint64_t wr_id; };
struct mqp {
    struct ibv_qp qp;
    int used;
    struct mpd *pd;
    struct mcq *scq, *rcq;
    struct ibv_qp_cap cap;
    int sig_all;
    /* attributes set by modify_qp */
    uint8_t port, timeout, retry_cnt, rnr_retry, min_rnr_timer, max_rd_atomic, max_dest_rd_atomic;
    uint16_t pkey_index;
    unsigned access;
    enum ibv_mtu path_mtu;
    struct ibv_ah_attr ah;
    uint32_t dest_qpn, rq_psn, sq_psn;
    /* queues */
    int sq_used, sq_unsignaled;
    struct recv *rq;
    int rq_head, rq_count, rq_used;
};

static struct ibv_device **lists[MAX_LISTS];
static struct mctx ctxs[MAX_CTX];
static struct mpd pds[MAX_PD];
static struct mmr mrs[MAX_MR];
static struct mcq cqs[MAX_CQ];
static struct mqp qps[MAX_QP];
static uint32_t key_seq = 0x51;
static uint32_t qpn_seq = 0x1a2b00;
static int next_qp_slot, next_mr_slot;

/* A pointer is a live object when it is the start of a used pool entry. */
#define LIVE(pool, n, p)                                                                                   \
    ((char *)(p) >= (char *)(pool) && (char *)(p) < (char *)((pool) + (n)) &&                              \
     ((char *)(p) - (char *)(pool)) % sizeof((pool)[0]) == 0 && ((typeof(&(pool)[0]))(void *)(p))->used)

static int stale(void) {
    stale_handles++;
    return EINVAL;
}

/* ---- ops slots this provider does not implement --------------------------------------------------------- */

static int wrong_op(void) {
    pthread_mutex_lock(&lock);
    wrong_ops++;
    pthread_mutex_unlock(&lock);
    return -EOPNOTSUPP;
}

static int mock_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc);
static int mock_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad);
static int mock_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad);

/* ---- device list, contexts, queries --------------------------------------------------------------------- */

struct ibv_device **ibv_get_device_list(int *num) {
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_LISTS; i++)
        if (!lists[i]) {
            lists[i] = calloc(2, sizeof(struct ibv_device *));
            if (!lists[i]) break;
            lists[i][0] = &device;
            live_objects++;
            if (num) *num = 1;
            struct ibv_device **l = lists[i];
            pthread_mutex_unlock(&lock);
            return l;
        }
    pthread_mutex_unlock(&lock);
    errno = ENOMEM;
    return NULL;
}

void ibv_free_device_list(struct ibv_device **list) {
    pthread_mutex_lock(&lock);
    int found = 0;
    for (int i = 0; i < MAX_LISTS; i++)
        if (list && lists[i] == list) { free(list); lists[i] = NULL; live_objects--; found = 1; break; }
    if (!found) stale_handles++;
    pthread_mutex_unlock(&lock);
}

const char *ibv_get_device_name(struct ibv_device *d) { return d == &device ? device.name : NULL; }

struct ibv_context *ibv_open_device(struct ibv_device *d) {
    if (d != &device) { errno = ENODEV; return NULL; }
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_CTX; i++)
        if (!ctxs[i].used) {
            struct mctx *m = &ctxs[i];
            memset(m, 0, sizeof *m);
            m->used = 1;
            m->c.device = d;
            m->c.cmd_fd = -1;
            m->c.async_fd = -1;
            m->c.num_comp_vectors = 1;
            pthread_mutex_init(&m->c.mutex, NULL);
            m->c.abi_compat = NULL; /* not a struct verbs_context: only the legacy ops table is used */
            void **slot = (void **)&m->c.ops;
            for (size_t k = 0; k < sizeof m->c.ops / sizeof(void *); k++) slot[k] = (void *)wrong_op;
            m->c.ops.poll_cq = mock_poll_cq;
            m->c.ops.post_send = mock_post_send;
            m->c.ops.post_recv = mock_post_recv;
            live_objects++;
            pthread_mutex_unlock(&lock);
            return &m->c;
        }
    pthread_mutex_unlock(&lock);
    errno = ENOMEM;
    return NULL;
}

/* Returns 0 or -1 with errno, as rdma-core's does. Children left open are counted as leaks, not freed. */
int ibv_close_device(struct ibv_context *c) {
    pthread_mutex_lock(&lock);
    if (!LIVE(ctxs, MAX_CTX, c)) { errno = stale(); pthread_mutex_unlock(&lock); return -1; }
    struct mctx *m = (struct mctx *)c;
    m->used = 0;
    live_objects--;
    pthread_mutex_unlock(&lock);
    return 0;
}

int ibv_query_device(struct ibv_context *c, struct ibv_device_attr *a) {
    pthread_mutex_lock(&lock);
    int ok = LIVE(ctxs, MAX_CTX, c);
    if (!ok) stale_handles++;
    pthread_mutex_unlock(&lock);
    if (!ok) return EINVAL;
    memset(a, 0, sizeof *a);
    strcpy(a->fw_ver, "0.1.mock");
    a->node_guid = 0x0011223344556677ull;
    a->sys_image_guid = a->node_guid;
    a->max_mr_size = 1ull << 40;
    a->page_size_cap = 0xfffff000;
    a->vendor_id = 0xfa;
    a->max_qp = MAX_QP;
    a->max_qp_wr = MAX_QP_WR;
    a->max_sge = MAX_SGE;
    a->max_sge_rd = MAX_SGE;
    a->max_cq = MAX_CQ;
    a->max_cqe = MAX_CQE;
    a->max_mr = MAX_MR;
    a->max_pd = MAX_PD;
    a->max_qp_rd_atom = MAX_RD_ATOM;
    a->max_res_rd_atom = MAX_RD_ATOM * MAX_QP;
    a->max_qp_init_rd_atom = MAX_RD_ATOM;
    a->max_pkeys = 128;
    a->local_ca_ack_delay = 16;
    a->phys_port_cnt = PORTS;
    return 0;
}

/* The exported compat symbol: fills the fields of rdma-core's private _compat_ibv_port_attr (every field up to
 * and including `flags`) and nothing past them, as the real one does. Returns 0 or an errno value. */
int ibv_query_port(struct ibv_context *c, uint8_t port, struct _compat_ibv_port_attr *compat) {
    pthread_mutex_lock(&lock);
    int ok = LIVE(ctxs, MAX_CTX, c);
    if (!ok) stale_handles++;
    pthread_mutex_unlock(&lock);
    if (!ok) return EINVAL;
    if (port < 1 || port > PORTS) return EINVAL;
    const struct port *p = &ports[port - 1];
    struct ibv_port_attr *a = (struct ibv_port_attr *)(void *)compat;
    a->state = p->state;
    a->max_mtu = p->max_mtu;
    a->active_mtu = p->active_mtu;
    a->gid_tbl_len = gid_tbl_len(p);
    a->port_cap_flags = 0;
    a->max_msg_sz = MAX_MSG_BYTES;
    a->bad_pkey_cntr = 0;
    a->qkey_viol_cntr = 0;
    a->pkey_tbl_len = p->pkey_tbl_len;
    a->lid = p->lid;
    a->sm_lid = p->link_layer == IBV_LINK_LAYER_INFINIBAND ? 1 : 0;
    a->lmc = 0;
    a->max_vl_num = 1;
    a->sm_sl = 0;
    a->subnet_timeout = 18;
    a->init_type_reply = 0;
    a->active_width = 2;
    a->active_speed = 32;
    a->phys_state = p->state == IBV_PORT_ACTIVE ? 5 : 3;
    a->link_layer = p->link_layer;
    a->flags = 0;
    return 0;
}

/* rdma-core's returns -1 with errno on failure and an all-zero GID for an empty entry. */
int ibv_query_gid(struct ibv_context *c, uint8_t port, int index, union ibv_gid *gid) {
    pthread_mutex_lock(&lock);
    int ok = LIVE(ctxs, MAX_CTX, c);
    if (!ok) stale_handles++;
    pthread_mutex_unlock(&lock);
    if (!ok || port < 1 || port > PORTS || index < 0 || index >= gid_tbl_len(&ports[port - 1])) {
        errno = EINVAL;
        return -1;
    }
    memcpy(gid->raw, ports[port - 1].gid[index].raw, 16);
    return 0;
}

/* Returns 0 or an errno value; ENODATA for an empty entry. */
int _ibv_query_gid_ex(struct ibv_context *c, uint32_t port, uint32_t index, struct ibv_gid_entry *e,
                      uint32_t flags, size_t entry_size) {
    pthread_mutex_lock(&lock);
    int ok = LIVE(ctxs, MAX_CTX, c);
    if (!ok) stale_handles++;
    pthread_mutex_unlock(&lock);
    if (!ok || flags != 0 || entry_size < sizeof *e || port < 1 || port > PORTS) return EINVAL;
    const struct port *p = &ports[port - 1];
    if (index >= (uint32_t)gid_tbl_len(p)) return EINVAL;
    if (gid_empty(p->gid[index].raw)) return ENODATA;
    memset(e, 0, sizeof *e);
    memcpy(e->gid.raw, p->gid[index].raw, 16);
    e->gid_index = index;
    e->port_num = port;
    e->gid_type = p->gid[index].type;
    e->ndev_ifindex = p->link_layer == IBV_LINK_LAYER_ETHERNET ? 2 : 0;
    return 0;
}

const char *ibv_wc_status_str(enum ibv_wc_status s) {
    static const char *const str[] = {
        [IBV_WC_SUCCESS] = "success",
        [IBV_WC_LOC_LEN_ERR] = "local length error",
        [IBV_WC_LOC_QP_OP_ERR] = "local QP operation error",
        [IBV_WC_LOC_EEC_OP_ERR] = "local EE context operation error",
        [IBV_WC_LOC_PROT_ERR] = "local protection error",
        [IBV_WC_WR_FLUSH_ERR] = "Work Request Flushed Error",
        [IBV_WC_MW_BIND_ERR] = "memory management operation error",
        [IBV_WC_BAD_RESP_ERR] = "bad response error",
        [IBV_WC_LOC_ACCESS_ERR] = "local access error",
        [IBV_WC_REM_INV_REQ_ERR] = "remote invalid request error",
        [IBV_WC_REM_ACCESS_ERR] = "remote access error",
        [IBV_WC_REM_OP_ERR] = "remote operation error",
        [IBV_WC_RETRY_EXC_ERR] = "transport retry counter exceeded",
        [IBV_WC_RNR_RETRY_EXC_ERR] = "RNR retry counter exceeded",
        [IBV_WC_LOC_RDD_VIOL_ERR] = "local RDD violation error",
        [IBV_WC_REM_INV_RD_REQ_ERR] = "remote invalid RD request",
        [IBV_WC_REM_ABORT_ERR] = "aborted error",
        [IBV_WC_INV_EECN_ERR] = "invalid EE context number",
        [IBV_WC_INV_EEC_STATE_ERR] = "invalid EE context state",
        [IBV_WC_FATAL_ERR] = "fatal error",
        [IBV_WC_RESP_TIMEOUT_ERR] = "response timeout error",
        [IBV_WC_GENERAL_ERR] = "general error",
    };
    if ((unsigned)s < sizeof str / sizeof str[0] && str[s]) return str[s];
    return "unknown";
}

/* ---- protection domains and memory regions -------------------------------------------------------------- */

struct ibv_pd *ibv_alloc_pd(struct ibv_context *c) {
    pthread_mutex_lock(&lock);
    if (!LIVE(ctxs, MAX_CTX, c)) { errno = stale(); pthread_mutex_unlock(&lock); return NULL; }
    for (int i = 0; i < MAX_PD; i++)
        if (!pds[i].used) {
            struct mpd *m = &pds[i];
            memset(m, 0, sizeof *m);
            m->used = 1;
            m->ctx = (struct mctx *)c;
            m->pd.context = c;
            m->pd.handle = (uint32_t)i;
            m->ctx->children++;
            live_objects++;
            pthread_mutex_unlock(&lock);
            return &m->pd;
        }
    pthread_mutex_unlock(&lock);
    errno = ENOMEM;
    return NULL;
}

int ibv_dealloc_pd(struct ibv_pd *pd) {
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (!LIVE(pds, MAX_PD, pd)) rc = stale();
    else if (((struct mpd *)pd)->users) rc = EBUSY; /* MRs or QPs still use it */
    else {
        struct mpd *m = (struct mpd *)pd;
        m->used = 0;
        m->ctx->children--;
        live_objects--;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Is [addr, addr + len) mapped in this process? (The real registration pins the pages and fails with EFAULT.) */
static int mapped(void *addr, size_t len) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t start = (uintptr_t)addr & ~(uintptr_t)(page - 1);
    size_t span = (uintptr_t)addr + len - start;
    size_t pages = (span + (size_t)page - 1) / (size_t)page;
    unsigned char vec[64];
    for (size_t done = 0; done < pages; done += sizeof vec) {
        size_t n = pages - done < sizeof vec ? pages - done : sizeof vec;
        if (mincore((void *)(start + done * (size_t)page), n * (size_t)page, vec) != 0) return 0;
    }
    return 1;
}

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
    const int known = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                      IBV_ACCESS_REMOTE_ATOMIC;
    pthread_mutex_lock(&lock);
    int err = 0;
    if (!LIVE(pds, MAX_PD, pd)) err = stale();
    else if (access & ~known) err = EINVAL;
    /* verbs(3) ibv_reg_mr: remote write or atomic access needs local write too. */
    else if ((access & (IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_ATOMIC)) && !(access & IBV_ACCESS_LOCAL_WRITE))
        err = EINVAL;
    else if (length == 0 || !addr || (uintptr_t)addr + length < (uintptr_t)addr) err = EINVAL;
    else if (!mapped(addr, length)) err = EFAULT;
    if (err) { pthread_mutex_unlock(&lock); errno = err; return NULL; }
    for (int k = 0; k < MAX_MR; k++) {
        int i = (next_mr_slot + k) % MAX_MR; /* round robin: a stale key is not soon reused */
        if (mrs[i].used) continue;
        next_mr_slot = i + 1;
        struct mmr *m = &mrs[i];
        memset(m, 0, sizeof *m);
        m->used = 1;
        m->pd = (struct mpd *)pd;
        m->access = access;
        m->mr.context = pd->context;
        m->mr.pd = pd;
        m->mr.addr = addr;
        m->mr.length = length;
        m->mr.handle = (uint32_t)i;
        uint32_t seq = key_seq++;
        m->mr.lkey = (seq << 8) | 0x0a; /* distinct local and remote keys, as mlx5's differ from rxe's */
        m->mr.rkey = (seq << 8) | 0xb0;
        m->pd->users++;
        live_objects++;
        pthread_mutex_unlock(&lock);
        return &m->mr;
    }
    pthread_mutex_unlock(&lock);
    errno = ENOMEM;
    return NULL;
}

int ibv_dereg_mr(struct ibv_mr *mr) {
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (!LIVE(mrs, MAX_MR, mr)) rc = stale();
    else {
        struct mmr *m = (struct mmr *)mr;
        m->used = 0;
        m->pd->users--;
        live_objects--;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static struct mmr *find_mr(struct mpd *pd, uint32_t key, int remote) {
    for (int i = 0; i < MAX_MR; i++)
        if (mrs[i].used && mrs[i].pd == pd && (remote ? mrs[i].mr.rkey : mrs[i].mr.lkey) == key) return &mrs[i];
    return NULL;
}

static int in_mr(const struct mmr *m, uint64_t addr, uint64_t len) {
    uint64_t lo = (uintptr_t)m->mr.addr, hi = lo + m->mr.length;
    return addr >= lo && addr <= hi && len <= hi - addr;
}

/* ---- completion queues ---------------------------------------------------------------------------------- */

static int pow2_at_least(int n) {
    int p = 1;
    while (p < n) p <<= 1;
    return p;
}

struct ibv_cq *ibv_create_cq(struct ibv_context *c, int cqe, void *cq_context, struct ibv_comp_channel *channel,
                             int comp_vector) {
    pthread_mutex_lock(&lock);
    int err = 0;
    if (!LIVE(ctxs, MAX_CTX, c)) err = stale();
    else if (cqe < 1 || cqe > MAX_CQE || comp_vector < 0 || comp_vector >= c->num_comp_vectors) err = EINVAL;
    else if (channel) err = EOPNOTSUPP; /* completion channels are not emulated */
    if (err) { pthread_mutex_unlock(&lock); errno = err; return NULL; }
    for (int i = 0; i < MAX_CQ; i++)
        if (!cqs[i].used) {
            struct mcq *m = &cqs[i];
            int cap = pow2_at_least(cqe + 1) - 1; /* mlx5: align_queue_size(cqe + 1) - 1 */
            struct cqe *ring = calloc((size_t)cap, sizeof *ring);
            if (!ring) break;
            memset(m, 0, sizeof *m);
            m->used = 1;
            m->ctx = (struct mctx *)c;
            m->cap = cap;
            m->ring = ring;
            m->cq.context = c;
            m->cq.cq_context = cq_context;
            m->cq.handle = (uint32_t)i;
            m->cq.cqe = cap;
            pthread_mutex_init(&m->cq.mutex, NULL);
            pthread_cond_init(&m->cq.cond, NULL);
            m->ctx->children++;
            live_objects++;
            pthread_mutex_unlock(&lock);
            return &m->cq;
        }
    pthread_mutex_unlock(&lock);
    errno = ENOMEM;
    return NULL;
}

int ibv_destroy_cq(struct ibv_cq *cq) {
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (!LIVE(cqs, MAX_CQ, cq)) rc = stale();
    else if (((struct mcq *)cq)->users) rc = EBUSY; /* a QP still uses it */
    else {
        struct mcq *m = (struct mcq *)cq;
        free(m->ring);
        m->ring = NULL;
        m->used = 0;
        m->ctx->children--;
        live_objects--;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static void to_error(struct mqp *q);

/* Appends a completion; a full CQ overruns (its entries are lost from then on) and the QP goes to ERR. */
static void complete(struct mcq *cq, struct mqp *q, struct ibv_wc wc, int sq_slots, int rq_slots) {
    if (wc.status != IBV_WC_SUCCESS) {
        error_completions++;
        wc.opcode = WC_OPCODE_UNDEFINED;
        wc.byte_len = 0;
        wc.wc_flags = 0;
        wc.vendor_err = 0x80 | wc.status;
    }
    if (cq->overrun || cq->count == cq->cap) {
        if (!cq->overrun) cq_overruns++;
        cq->overrun = 1;
        q->sq_used -= sq_slots;
        q->rq_used -= rq_slots;
        if (q->qp.state != IBV_QPS_ERR) to_error(q);
        return;
    }
    struct cqe *e = &cq->ring[(cq->head + cq->count) % cq->cap];
    e->wc = wc;
    e->qp = q;
    e->sq_slots = sq_slots;
    e->rq_slots = rq_slots;
    cq->count++;
}

/* Returns how many completions were written, or -1 once the CQ has overrun. */
static int mock_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc) {
    pthread_mutex_lock(&lock);
    if (!LIVE(cqs, MAX_CQ, cq)) { stale(); pthread_mutex_unlock(&lock); return -1; }
    struct mcq *m = (struct mcq *)cq;
    if (m->overrun) { pthread_mutex_unlock(&lock); return -1; }
    int k = 0;
    while (k < n && m->count > 0) {
        struct cqe *e = &m->ring[m->head];
        wc[k++] = e->wc;
        e->qp->sq_used -= e->sq_slots;
        e->qp->rq_used -= e->rq_slots;
        m->head = (m->head + 1) % m->cap;
        m->count--;
    }
    pthread_mutex_unlock(&lock);
    return k;
}

/* Drops q's completions from cq (mlx5's __mlx5_cq_clean on destroy or reset). */
static void cq_clean(struct mcq *cq, struct mqp *q) {
    int kept = 0;
    for (int k = 0; k < cq->count; k++) {
        struct cqe e = cq->ring[(cq->head + k) % cq->cap];
        if (e.qp != q) cq->ring[(cq->head + kept++) % cq->cap] = e;
    }
    cq->count = kept;
}

/* ---- queue pairs ---------------------------------------------------------------------------------------- */

struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *a) {
    pthread_mutex_lock(&lock);
    int err = 0;
    if (!LIVE(pds, MAX_PD, pd) || !LIVE(cqs, MAX_CQ, a->send_cq) || !LIVE(cqs, MAX_CQ, a->recv_cq)) err = stale();
    else if (a->send_cq->context != pd->context || a->recv_cq->context != pd->context) err = EINVAL;
    else if (a->qp_type != IBV_QPT_RC || a->srq) err = EOPNOTSUPP; /* only RC without SRQ is emulated */
    else if (a->cap.max_send_wr < 1 || a->cap.max_send_wr > MAX_QP_WR || a->cap.max_recv_wr < 1 ||
             a->cap.max_recv_wr > MAX_QP_WR || a->cap.max_send_sge > MAX_SGE || a->cap.max_recv_sge > MAX_SGE ||
             a->cap.max_inline_data > MAX_INLINE)
        err = EINVAL;
    if (err) { pthread_mutex_unlock(&lock); errno = err; return NULL; }
    for (int k = 0; k < MAX_QP; k++) {
        int i = (next_qp_slot + k) % MAX_QP;
        if (qps[i].used) continue;
        struct mqp *q = &qps[i];
        int recv_depth = pow2_at_least((int)a->cap.max_recv_wr);
        struct recv *rq = calloc((size_t)recv_depth, sizeof *rq);
        if (!rq) break;
        next_qp_slot = i + 1;
        memset(q, 0, sizeof *q);
        q->used = 1;
        q->pd = (struct mpd *)pd;
        q->scq = (struct mcq *)a->send_cq;
        q->rcq = (struct mcq *)a->recv_cq;
        /* mlx5 rounds work queue depths up to powers of two and reports what it granted. */
        a->cap.max_send_wr = (uint32_t)pow2_at_least((int)a->cap.max_send_wr);
        a->cap.max_recv_wr = (uint32_t)recv_depth;
        q->cap = a->cap;
        q->sig_all = a->sq_sig_all;
        q->rq = rq;
        q->qp.context = pd->context;
        q->qp.qp_context = a->qp_context;
        q->qp.pd = pd;
        q->qp.send_cq = a->send_cq;
        q->qp.recv_cq = a->recv_cq;
        q->qp.handle = (uint32_t)i;
        q->qp.qp_num = qpn_seq++ & 0xffffff;
        q->qp.state = IBV_QPS_RESET;
        q->qp.qp_type = IBV_QPT_RC;
        pthread_mutex_init(&q->qp.mutex, NULL);
        pthread_cond_init(&q->qp.cond, NULL);
        q->pd->users++;
        q->scq->users++;
        q->rcq->users++;
        live_objects++;
        pthread_mutex_unlock(&lock);
        return &q->qp;
    }
    pthread_mutex_unlock(&lock);
    errno = ENOMEM;
    return NULL;
}

int ibv_destroy_qp(struct ibv_qp *qp) {
    pthread_mutex_lock(&lock);
    if (!LIVE(qps, MAX_QP, qp)) { int rc = stale(); pthread_mutex_unlock(&lock); return rc; }
    struct mqp *q = (struct mqp *)qp;
    cq_clean(q->scq, q);
    if (q->rcq != q->scq) cq_clean(q->rcq, q);
    free(q->rq);
    q->rq = NULL;
    q->pd->users--;
    q->scq->users--;
    q->rcq->users--;
    q->used = 0;
    live_objects--;
    pthread_mutex_unlock(&lock);
    return 0;
}

/* Flushes the receive queue (every posted receive completes with IBV_WC_WR_FLUSH_ERR) and enters ERR. */
static void to_error(struct mqp *q) {
    q->qp.state = IBV_QPS_ERR;
    while (q->rq_count > 0) {
        struct ibv_wc wc = {.wr_id = q->rq[q->rq_head].wr_id, .status = IBV_WC_WR_FLUSH_ERR, .qp_num = q->qp.qp_num};
        q->rq_head = (q->rq_head + 1) % (int)q->cap.max_recv_wr;
        q->rq_count--;
        complete(q->rcq, q, wc, 0, 1);
    }
}

/* Required and optional attribute masks per transition for RC (ibv_modify_qp(3); the kernel's qp_state_table). */
static int transition_masks(enum ibv_qp_state cur, enum ibv_qp_state next, int *req, int *opt) {
    *req = 0;
    *opt = 0;
    if (next == IBV_QPS_RESET || next == IBV_QPS_ERR) return cur <= IBV_QPS_ERR;
    switch (cur * 16 + next) {
    case IBV_QPS_RESET * 16 + IBV_QPS_INIT:
        *req = IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
        return 1;
    case IBV_QPS_INIT * 16 + IBV_QPS_INIT:
        *opt = IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
        return 1;
    case IBV_QPS_INIT * 16 + IBV_QPS_RTR:
        *req = IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
               IBV_QP_MIN_RNR_TIMER;
        *opt = IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS | IBV_QP_PKEY_INDEX;
        return 1;
    case IBV_QPS_RTR * 16 + IBV_QPS_RTS:
        *req = IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_TIMEOUT;
        *opt = IBV_QP_CUR_STATE | IBV_QP_ALT_PATH | IBV_QP_ACCESS_FLAGS | IBV_QP_MIN_RNR_TIMER |
               IBV_QP_PATH_MIG_STATE;
        return 1;
    case IBV_QPS_RTS * 16 + IBV_QPS_RTS:
        *opt = IBV_QP_CUR_STATE | IBV_QP_ACCESS_FLAGS | IBV_QP_ALT_PATH | IBV_QP_PATH_MIG_STATE |
               IBV_QP_MIN_RNR_TIMER;
        return 1;
    default:
        return 0;
    }
}

/* The address vector of an RC QP: RoCE needs a GRH from a populated source GID and a destination GID,
 * InfiniBand a unicast destination LID. */
static int av_ok(const struct mqp *q, const struct ibv_ah_attr *ah) {
    if (ah->port_num != q->port) return 0;
    const struct port *p = &ports[q->port - 1];
    if (p->link_layer == IBV_LINK_LAYER_ETHERNET) {
        if (!ah->is_global) return 0;
        if (gid_empty(ah->grh.dgid.raw)) return 0;
    } else if (ah->dlid == 0 || ah->dlid >= 0xc000) {
        return 0;
    }
    if (ah->is_global) {
        if (ah->grh.sgid_index >= gid_tbl_len(p) || gid_empty(p->gid[ah->grh.sgid_index].raw)) return 0;
    }
    return 1;
}

static int check_values(struct mqp *q, const struct ibv_qp_attr *a, int mask) {
    uint8_t port = (mask & IBV_QP_PORT) ? a->port_num : q->port;
    if (port < 1 || port > PORTS) return 0;
    if ((mask & IBV_QP_PKEY_INDEX) && a->pkey_index >= ports[port - 1].pkey_tbl_len) return 0;
    if ((mask & IBV_QP_ACCESS_FLAGS) &&
        (a->qp_access_flags &
         ~(unsigned)(IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ |
                     IBV_ACCESS_REMOTE_ATOMIC)))
        return 0;
    if ((mask & IBV_QP_PATH_MTU) && (a->path_mtu < IBV_MTU_256 || a->path_mtu > ports[port - 1].active_mtu))
        return 0;
    if ((mask & IBV_QP_DEST_QPN) && a->dest_qp_num > 0xffffff) return 0;
    if ((mask & IBV_QP_RQ_PSN) && a->rq_psn > 0xffffff) return 0;
    if ((mask & IBV_QP_SQ_PSN) && a->sq_psn > 0xffffff) return 0;
    if ((mask & IBV_QP_MAX_DEST_RD_ATOMIC) && a->max_dest_rd_atomic > MAX_RD_ATOM) return 0;
    if ((mask & IBV_QP_MAX_QP_RD_ATOMIC) && a->max_rd_atomic > MAX_RD_ATOM) return 0;
    if ((mask & IBV_QP_MIN_RNR_TIMER) && a->min_rnr_timer > 31) return 0;
    if ((mask & IBV_QP_TIMEOUT) && a->timeout > 31) return 0;
    if ((mask & IBV_QP_RETRY_CNT) && a->retry_cnt > 7) return 0;
    if ((mask & IBV_QP_RNR_RETRY) && a->rnr_retry > 7) return 0;
    if (mask & IBV_QP_AV) {
        uint8_t saved = q->port;
        q->port = port;
        int ok = av_ok(q, &a->ah_attr);
        q->port = saved;
        if (!ok) return 0;
    }
    return 1;
}

/* Returns 0 or an errno value; on success libibverbs records the new state in qp->state. */
int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *a, int mask) {
    pthread_mutex_lock(&lock);
    if (!LIVE(qps, MAX_QP, qp)) { int rc = stale(); pthread_mutex_unlock(&lock); return rc; }
    struct mqp *q = (struct mqp *)qp;
    enum ibv_qp_state cur = qp->state;
    if ((mask & IBV_QP_CUR_STATE) && a->cur_qp_state != cur) goto invalid;
    enum ibv_qp_state next = (mask & IBV_QP_STATE) ? a->qp_state : cur;
    int req, opt;
    if (!transition_masks(cur, next, &req, &opt)) goto invalid;
    int given = mask & ~(IBV_QP_STATE | IBV_QP_CUR_STATE);
    if ((given & req) != req || (given & ~(req | opt))) goto invalid;
    if (!check_values(q, a, mask)) goto invalid;

    if (mask & IBV_QP_PORT) q->port = a->port_num;
    if (mask & IBV_QP_PKEY_INDEX) q->pkey_index = a->pkey_index;
    if (mask & IBV_QP_ACCESS_FLAGS) q->access = a->qp_access_flags;
    if (mask & IBV_QP_AV) q->ah = a->ah_attr;
    if (mask & IBV_QP_PATH_MTU) q->path_mtu = a->path_mtu;
    if (mask & IBV_QP_DEST_QPN) q->dest_qpn = a->dest_qp_num;
    if (mask & IBV_QP_RQ_PSN) q->rq_psn = a->rq_psn;
    if (mask & IBV_QP_SQ_PSN) q->sq_psn = a->sq_psn;
    if (mask & IBV_QP_MAX_DEST_RD_ATOMIC) q->max_dest_rd_atomic = a->max_dest_rd_atomic;
    if (mask & IBV_QP_MAX_QP_RD_ATOMIC) q->max_rd_atomic = a->max_rd_atomic;
    if (mask & IBV_QP_MIN_RNR_TIMER) q->min_rnr_timer = a->min_rnr_timer;
    if (mask & IBV_QP_TIMEOUT) q->timeout = a->timeout;
    if (mask & IBV_QP_RETRY_CNT) q->retry_cnt = a->retry_cnt;
    if (mask & IBV_QP_RNR_RETRY) q->rnr_retry = a->rnr_retry;
    if (next == IBV_QPS_ERR && cur != IBV_QPS_ERR) {
        to_error(q);
    } else if (next == IBV_QPS_RESET) {
        cq_clean(q->scq, q);
        if (q->rcq != q->scq) cq_clean(q->rcq, q);
        q->sq_used = q->sq_unsignaled = q->rq_head = q->rq_count = q->rq_used = 0;
    }
    qp->state = next;
    pthread_mutex_unlock(&lock);
    return 0;
invalid:
    rejected_modifies++;
    pthread_mutex_unlock(&lock);
    return EINVAL;
}

/* ---- the data path -------------------------------------------------------------------------------------- */

static struct mqp *qp_by_num(uint32_t qpn) {
    for (int i = 0; i < MAX_QP; i++)
        if (qps[i].used && qps[i].qp.qp_num == qpn) return &qps[i];
    return NULL;
}

/* Does a's address vector and destination QP number name b (its port's GID or LID, its QP number)? */
static int addresses(const struct mqp *a, const struct mqp *b) {
    if (a->dest_qpn != b->qp.qp_num) return 0;
    const struct port *pa = &ports[a->port - 1], *pb = &ports[b->port - 1];
    if (pa->link_layer != pb->link_layer || pb->state != IBV_PORT_ACTIVE) return 0;
    if (pb->link_layer == IBV_LINK_LAYER_ETHERNET) {
        /* The destination GID must be one of b's with the same RoCE version as a's source GID. */
        enum ibv_gid_type type = pa->gid[a->ah.grh.sgid_index].type;
        for (int i = 0; i < GIDS; i++)
            if (!gid_empty(pb->gid[i].raw) && pb->gid[i].type == type &&
                memcmp(pb->gid[i].raw, a->ah.grh.dgid.raw, 16) == 0)
                return 1;
        return 0;
    }
    return a->ah.dlid == pb->lid;
}

/* RNR NAK timer codes in ns (IB spec vol. 1 table 45); code 0 is 655.36 ms. */
static const long rnr_timer_ns[32] = {
    655360000, 10000, 20000, 30000, 40000, 60000, 80000, 120000, 160000, 240000, 320000, 480000, 640000,
    960000, 1280000, 1920000, 2560000, 3840000, 5120000, 7680000, 10240000, 15360000, 20480000, 30720000,
    40960000, 61440000, 81920000, 122880000, 163840000, 245760000, 327680000, 491520000,
};

static uint32_t packets(uint64_t len, enum ibv_mtu mtu) {
    uint64_t mtu_bytes = 256ull << (mtu - 1);
    return len == 0 ? 1 : (uint32_t)((len + mtu_bytes - 1) / mtu_bytes);
}

/* Local scatter/gather entries: every lkey a region of the QP's PD covering the entry, with local write for
 * the entries a READ fills. Returns the total length, or -1 (local protection error). */
static int64_t check_sges(struct mqp *q, struct ibv_sge *sg, int n, int need_local_write) {
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (sg[i].length == 0) continue;
        struct mmr *m = find_mr(q->pd, sg[i].lkey, 0);
        if (!m || !in_mr(m, sg[i].addr, sg[i].length)) return -1;
        if (need_local_write && !(m->access & IBV_ACCESS_LOCAL_WRITE)) return -1;
        total += sg[i].length;
    }
    return total;
}

/* Not a completion status: the responder had no receive posted; the requester waits and retries. */
#define RNR_NAK 0x100

/* Executes one RDMA request on the connected peer; returns the sender's completion status, or RNR_NAK with the
 * responder's RNR timer code (nothing has changed on either side then). */
static int execute(struct mqp *q, struct ibv_send_wr *wr, uint32_t *byte_len, uint8_t *rnr_timer) {
    int is_read = wr->opcode == IBV_WR_RDMA_READ;
    int64_t len = check_sges(q, wr->sg_list, wr->num_sge, is_read);
    if (len < 0) return IBV_WC_LOC_PROT_ERR;
    if ((uint64_t)len > MAX_MSG_BYTES) return IBV_WC_LOC_LEN_ERR;
    struct mqp *r = qp_by_num(q->dest_qpn);
    /* No such QP, not receiving, not addressed back, or a PSN other than the one it expects: the packets are
     * dropped or NAKed until the retry count runs out. */
    if (!r || r->pd->ctx->c.device != q->pd->ctx->c.device || r->qp.state < IBV_QPS_RTR ||
        r->qp.state > IBV_QPS_RTS || !addresses(q, r) || !addresses(r, q) || q->sq_psn != r->rq_psn ||
        q->path_mtu > ports[r->port - 1].active_mtu)
        return IBV_WC_RETRY_EXC_ERR;
    uint64_t raddr = wr->wr.rdma.remote_addr;
    int need = is_read ? IBV_ACCESS_REMOTE_READ : IBV_ACCESS_REMOTE_WRITE;
    struct mmr *m = NULL;
    if (len > 0 || is_read) { /* a zero-length WRITE checks no rkey (IB spec 9.7.4.1.4) */
        m = find_mr(r->pd, wr->wr.rdma.rkey, 1);
        if (!m || !in_mr(m, raddr, (uint64_t)len) || !(m->access & need) || !(r->access & (unsigned)need) ||
            (is_read && (q->max_rd_atomic == 0 || r->max_dest_rd_atomic == 0))) {
            to_error(r);
            return IBV_WC_REM_ACCESS_ERR;
        }
    }
    int with_imm = wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM;
    if (with_imm && r->rq_count == 0) {
        *rnr_timer = r->min_rnr_timer; /* the responder's RNR NAK names its timer */
        return RNR_NAK;
    }

    char *remote = (char *)(uintptr_t)raddr;
    for (int i = 0; i < wr->num_sge; i++) {
        char *local = (char *)(uintptr_t)wr->sg_list[i].addr;
        uint32_t n = wr->sg_list[i].length;
        if (is_read) memmove(local, remote, n);
        else memmove(remote, local, n);
        remote += n;
    }
    bytes_moved += len;
    uint32_t npkt = packets((uint64_t)len, q->path_mtu);
    q->sq_psn = (q->sq_psn + npkt) & 0xffffff;
    r->rq_psn = (r->rq_psn + npkt) & 0xffffff;
    if (is_read) reads_delivered++;
    else writes_delivered++;
    if (with_imm) {
        struct recv rv = r->rq[r->rq_head];
        r->rq_head = (r->rq_head + 1) % (int)r->cap.max_recv_wr;
        r->rq_count--;
        struct ibv_wc wc = {
            .wr_id = rv.wr_id,
            .status = IBV_WC_SUCCESS,
            .opcode = IBV_WC_RECV_RDMA_WITH_IMM,
            .byte_len = (uint32_t)len,
            .imm_data = wr->imm_data, /* network order, as sent */
            .qp_num = r->qp.qp_num,
            .src_qp = q->qp.qp_num,
            .wc_flags = IBV_WC_WITH_IMM | (ports[r->port - 1].link_layer == IBV_LINK_LAYER_ETHERNET ? IBV_WC_GRH : 0),
            .slid = ports[q->port - 1].lid,
        };
        complete(r->rcq, r, wc, 0, 1);
    }
    *byte_len = is_read ? (uint32_t)len : 0;
    return IBV_WC_SUCCESS;
}

/* Returns 0, or an errno value with *bad naming the first request not posted (earlier ones were). */
static int mock_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (!LIVE(qps, MAX_QP, qp)) { rc = stale(); *bad = wr; goto out; }
    struct mqp *q = (struct mqp *)qp;
    for (; wr; wr = wr->next) {
        const unsigned known = IBV_SEND_FENCE | IBV_SEND_SIGNALED | IBV_SEND_SOLICITED | IBV_SEND_INLINE;
        if (q->qp.state != IBV_QPS_RTS && q->qp.state != IBV_QPS_ERR) rc = EINVAL;
        else if (wr->opcode != IBV_WR_RDMA_WRITE && wr->opcode != IBV_WR_RDMA_WRITE_WITH_IMM &&
                 wr->opcode != IBV_WR_RDMA_READ)
            rc = EOPNOTSUPP; /* SEND and atomics are not emulated */
        else if (wr->num_sge < 0 || (uint32_t)wr->num_sge > q->cap.max_send_sge || (wr->num_sge && !wr->sg_list))
            rc = EINVAL;
        else if (wr->send_flags & ~known) rc = EINVAL;
        else if (q->sq_used >= (int)q->cap.max_send_wr) rc = ENOMEM;
        else if (wr->send_flags & IBV_SEND_INLINE) {
            uint64_t total = 0;
            for (int i = 0; i < wr->num_sge; i++) total += wr->sg_list[i].length;
            if (total > q->cap.max_inline_data || wr->opcode == IBV_WR_RDMA_READ) rc = EINVAL;
        }
        if (rc) { *bad = wr; break; }
        q->sq_used++;
        int signaled = q->sig_all || (wr->send_flags & IBV_SEND_SIGNALED);
        uint32_t byte_len = 0;
        int st = IBV_WC_WR_FLUSH_ERR;
        /* Receiver not ready: wait the responder's RNR timer, without the lock so it can post receives, and
         * retry, rnr_retry times (7: forever), as the requester's hardware would. */
        for (int retries = 0; q->qp.state != IBV_QPS_ERR; retries++) {
            uint8_t timer = 0;
            st = execute(q, wr, &byte_len, &timer);
            if (st != RNR_NAK) break;
            if (q->rnr_retry != 7 && retries == q->rnr_retry) { st = IBV_WC_RNR_RETRY_EXC_ERR; break; }
            rnr_waits++;
            pthread_mutex_unlock(&lock);
            struct timespec ts = {0, rnr_timer_ns[timer & 31]};
            nanosleep(&ts, NULL);
            pthread_mutex_lock(&lock);
            if (!q->used) { rc = stale(); *bad = wr; goto out; } /* destroyed while posting: misuse */
        }
        if (st != IBV_WC_SUCCESS || signaled) {
            struct ibv_wc wc = {
                .wr_id = wr->wr_id,
                .status = st,
                .opcode = wr->opcode == IBV_WR_RDMA_READ ? IBV_WC_RDMA_READ : IBV_WC_RDMA_WRITE,
                .byte_len = byte_len,
                .qp_num = q->qp.qp_num,
            };
            int slots = q->sq_unsignaled + 1;
            q->sq_unsignaled = 0;
            complete(q->scq, q, wc, slots, 0);
        } else {
            q->sq_unsignaled++;
        }
        if (st != IBV_WC_SUCCESS && q->qp.state != IBV_QPS_ERR) to_error(q);
    }
out:
    if (rc) rejected_posts++;
    pthread_mutex_unlock(&lock);
    return rc;
}

static int mock_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (!LIVE(qps, MAX_QP, qp)) { rc = stale(); *bad = wr; goto out; }
    struct mqp *q = (struct mqp *)qp;
    for (; wr; wr = wr->next) {
        if (q->qp.state == IBV_QPS_RESET) rc = EINVAL;
        else if (wr->num_sge < 0 || (uint32_t)wr->num_sge > q->cap.max_recv_sge || (wr->num_sge && !wr->sg_list))
            rc = EINVAL;
        else if (q->rq_used >= (int)q->cap.max_recv_wr) rc = ENOMEM;
        if (rc) { *bad = wr; break; }
        q->rq_used++;
        if (q->qp.state == IBV_QPS_ERR) {
            struct ibv_wc wc = {.wr_id = wr->wr_id, .status = IBV_WC_WR_FLUSH_ERR, .qp_num = q->qp.qp_num};
            complete(q->rcq, q, wc, 0, 1);
            continue;
        }
        q->rq[(q->rq_head + q->rq_count) % (int)q->cap.max_recv_wr].wr_id = wr->wr_id;
        q->rq_count++;
    }
out:
    if (rc) rejected_posts++;
    pthread_mutex_unlock(&lock);
    return rc;
}
