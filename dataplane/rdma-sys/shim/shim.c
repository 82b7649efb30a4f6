// Non-inline entry points over rdma-core 44's verbs for the Rust side (decision 0028). The
// fast-path verbs are static inline in verbs.h, calling through the context's ops table; these
// wrappers are compiled against the real header, so they follow it. Built with
// RDMA_STATIC_PROVIDERS=rxe,mlx5: ibv_get_device_list then references those providers'
// verbs_provider_* symbols, which pulls them out of their static archives and registers them.

#include <errno.h>
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct ibv_device **dwcp_ibv_get_device_list(int *num, int *err)
{
	errno = 0;
	struct ibv_device **list = ibv_get_device_list(num);
	*err = list ? 0 : errno;
	return list;
}

void dwcp_ibv_free_device_list(struct ibv_device **list)
{
	ibv_free_device_list(list);
}

const char *dwcp_ibv_get_device_name(struct ibv_device *dev)
{
	return ibv_get_device_name(dev);
}

uint64_t dwcp_ibv_get_device_guid(struct ibv_device *dev)
{
	return ibv_get_device_guid(dev);
}

struct ibv_context *dwcp_ibv_open_device(struct ibv_device *dev, int *err)
{
	errno = 0;
	struct ibv_context *ctx = ibv_open_device(dev);
	*err = ctx ? 0 : errno;
	return ctx;
}

int dwcp_ibv_close_device(struct ibv_context *ctx)
{
	return ibv_close_device(ctx);
}

// What the transport needs of a port: its state, active MTU and link layer (Ethernet for
// RoCE).
int dwcp_ibv_query_port(struct ibv_context *ctx, uint8_t port, int *state, int *active_mtu,
			int *link_layer)
{
	struct ibv_port_attr attr;
	memset(&attr, 0, sizeof(attr));
	int r = ibv_query_port(ctx, port, &attr);
	if (r == 0) {
		*state = attr.state;
		*active_mtu = attr.active_mtu;
		*link_layer = attr.link_layer;
	}
	return r;
}

int dwcp_ibv_poll_cq(struct ibv_cq *cq, int num_entries, struct ibv_wc *wc)
{
	return ibv_poll_cq(cq, num_entries, wc);
}

int dwcp_ibv_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad_wr)
{
	return ibv_post_send(qp, wr, bad_wr);
}

int dwcp_ibv_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad_wr)
{
	return ibv_post_recv(qp, wr, bad_wr);
}

// Layouts the Rust side mirrors, checked by its tests.
size_t dwcp_sizeof_ibv_wc(void)
{
	return sizeof(struct ibv_wc);
}

// ---- The transport's verbs: one context per worker (device, protection domain, one
// completion queue, one shared receive queue), reliable-connected queue pairs on it. The Rust
// side sees only these plain functions and `struct dwcp_wc`; no verbs struct crosses over.

struct dwcp_rdma {
	struct ibv_context *ctx;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_srq *srq;
	uint8_t port;
	uint8_t gid_index;
	union ibv_gid gid;
	enum ibv_mtu mtu;
};

// A work completion, reduced to what the transport reads.
struct dwcp_wc {
	uint64_t wr_id;
	uint32_t status;
	uint32_t opcode;
	uint32_t byte_len;
	uint32_t qp_num;
};

void dwcp_rdma_close(struct dwcp_rdma *r)
{
	if (!r)
		return;
	if (r->srq)
		ibv_destroy_srq(r->srq);
	if (r->cq)
		ibv_destroy_cq(r->cq);
	if (r->pd)
		ibv_dealloc_pd(r->pd);
	if (r->ctx)
		ibv_close_device(r->ctx);
	free(r);
}

// Opens device `name`, checks `port` is active and `gid_index` holds a GID, and makes the
// protection domain, the completion queue (`cqe` entries) and the shared receive queue
// (`srq_wr` receives). On failure returns NULL with `step` naming what failed and `*err` the
// errno (0: not an errno).
struct dwcp_rdma *dwcp_rdma_open(const char *name, uint8_t port, uint8_t gid_index, int cqe,
				 uint32_t srq_wr, const char **step, int *err)
{
	*err = 0;
	int n = 0;
	struct ibv_device **list = ibv_get_device_list(&n);
	if (!list) {
		*step = "list devices";
		*err = errno;
		return NULL;
	}
	struct ibv_device *dev = NULL;
	for (int i = 0; i < n; i++)
		if (strcmp(ibv_get_device_name(list[i]), name) == 0)
			dev = list[i];
	struct dwcp_rdma *r = calloc(1, sizeof(*r));
	if (!r) {
		ibv_free_device_list(list);
		*step = "allocate";
		*err = ENOMEM;
		return NULL;
	}
	r->port = port;
	r->gid_index = gid_index;
	if (!dev) {
		*step = "find device";
		goto fail;
	}
	r->ctx = ibv_open_device(dev);
	if (!r->ctx) {
		*step = "open device";
		*err = errno;
		goto fail;
	}
	struct ibv_port_attr pa;
	memset(&pa, 0, sizeof(pa));
	if (ibv_query_port(r->ctx, port, &pa)) {
		*step = "query port";
		*err = errno;
		goto fail;
	}
	if (pa.state != IBV_PORT_ACTIVE) {
		*step = "port not active";
		goto fail;
	}
	r->mtu = pa.active_mtu;
	if (gid_index >= pa.gid_tbl_len || ibv_query_gid(r->ctx, port, gid_index, &r->gid)) {
		*step = "query gid";
		*err = errno;
		goto fail;
	}
	static const uint8_t zero[16];
	if (memcmp(r->gid.raw, zero, 16) == 0) {
		*step = "gid empty";
		goto fail;
	}
	r->pd = ibv_alloc_pd(r->ctx);
	if (!r->pd) {
		*step = "allocate protection domain";
		*err = errno;
		goto fail;
	}
	r->cq = ibv_create_cq(r->ctx, cqe, NULL, NULL, 0);
	if (!r->cq) {
		*step = "create completion queue";
		*err = errno;
		goto fail;
	}
	struct ibv_srq_init_attr sa;
	memset(&sa, 0, sizeof(sa));
	sa.attr.max_wr = srq_wr;
	sa.attr.max_sge = 1;
	r->srq = ibv_create_srq(r->pd, &sa);
	if (!r->srq) {
		*step = "create shared receive queue";
		*err = errno;
		goto fail;
	}
	ibv_free_device_list(list);
	return r;
fail:
	ibv_free_device_list(list);
	dwcp_rdma_close(r);
	return NULL;
}

void dwcp_rdma_gid(const struct dwcp_rdma *r, uint8_t out[16])
{
	memcpy(out, r->gid.raw, 16);
}

int dwcp_rdma_mtu(const struct dwcp_rdma *r)
{
	return r->mtu;
}

// Registers `len` bytes at `addr` for local access (receives and sends).
struct ibv_mr *dwcp_rdma_reg(struct dwcp_rdma *r, void *addr, size_t len, uint32_t *lkey,
			     int *err)
{
	struct ibv_mr *mr = ibv_reg_mr(r->pd, addr, len, IBV_ACCESS_LOCAL_WRITE);
	*err = mr ? 0 : errno;
	if (mr)
		*lkey = mr->lkey;
	return mr;
}

int dwcp_rdma_dereg(struct ibv_mr *mr)
{
	return ibv_dereg_mr(mr);
}

// An RC queue pair on the context's CQ and SRQ, moved to INIT. `*max_inline` asks for an
// inline size and gets what the device gave.
struct ibv_qp *dwcp_rdma_qp_create(struct dwcp_rdma *r, uint32_t max_send, uint32_t *max_inline,
				   uint32_t *qpn, int *err)
{
	struct ibv_qp_init_attr ia;
	memset(&ia, 0, sizeof(ia));
	ia.send_cq = r->cq;
	ia.recv_cq = r->cq;
	ia.srq = r->srq;
	ia.cap.max_send_wr = max_send;
	ia.cap.max_send_sge = 1;
	ia.cap.max_inline_data = *max_inline;
	ia.qp_type = IBV_QPT_RC;
	struct ibv_qp *qp = ibv_create_qp(r->pd, &ia);
	if (!qp) {
		*err = errno;
		return NULL;
	}
	*max_inline = ia.cap.max_inline_data;
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_INIT;
	a.pkey_index = 0;
	a.port_num = r->port;
	a.qp_access_flags = 0;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
					  IBV_QP_ACCESS_FLAGS)) {
		*err = errno;
		ibv_destroy_qp(qp);
		return NULL;
	}
	*qpn = qp->qp_num;
	*err = 0;
	return qp;
}

// INIT -> RTR -> RTS towards the remote QP, as rdma-core's rc_pingpong does on RoCE
// (is_global with the remote GID and our GID index). Returns 0 or the errno, with `step`.
int dwcp_rdma_qp_connect(struct dwcp_rdma *r, struct ibv_qp *qp, uint32_t remote_qpn,
			 uint32_t remote_psn, const uint8_t remote_gid[16], uint32_t local_psn,
			 int mtu, const char **step)
{
	struct ibv_qp_attr a;
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTR;
	a.path_mtu = (enum ibv_mtu)mtu;
	a.dest_qp_num = remote_qpn;
	a.rq_psn = remote_psn;
	a.max_dest_rd_atomic = 1;
	a.min_rnr_timer = 12;
	a.ah_attr.is_global = 1;
	memcpy(a.ah_attr.grh.dgid.raw, remote_gid, 16);
	a.ah_attr.grh.sgid_index = r->gid_index;
	a.ah_attr.grh.hop_limit = 64;
	a.ah_attr.sl = 0;
	a.ah_attr.src_path_bits = 0;
	a.ah_attr.port_num = r->port;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
					  IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
					  IBV_QP_MIN_RNR_TIMER)) {
		*step = "ready to receive";
		return errno ? errno : EINVAL;
	}
	memset(&a, 0, sizeof(a));
	a.qp_state = IBV_QPS_RTS;
	// About 67 ms per try, 6 retries: a peer that is gone shows as a retry-exceeded
	// completion within a second. Not 7: Soft-RoCE treats retry_cnt 7 as "retry forever"
	// (as the spec does only for rnr_retry), so a dead peer would never be noticed.
	a.timeout = 14;
	a.retry_cnt = 6;
	a.rnr_retry = 7;
	a.sq_psn = local_psn;
	a.max_rd_atomic = 1;
	if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
					  IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)) {
		*step = "ready to send";
		return errno ? errno : EINVAL;
	}
	return 0;
}

// The QP's state as the device reports it (enum ibv_qp_state), or -1.
int dwcp_rdma_qp_state(struct ibv_qp *qp)
{
	struct ibv_qp_attr a;
	struct ibv_qp_init_attr ia;
	if (ibv_query_qp(qp, &a, IBV_QP_STATE, &ia))
		return -1;
	return a.qp_state;
}

int dwcp_rdma_qp_destroy(struct ibv_qp *qp)
{
	return ibv_destroy_qp(qp);
}

// Posts one SEND of `len` bytes at `addr` (registered under `lkey` unless inline), signaled.
int dwcp_rdma_send(struct ibv_qp *qp, uint64_t wr_id, const void *addr, uint32_t len,
		   uint32_t lkey, int inline_data)
{
	struct ibv_sge sge = { .addr = (uintptr_t)addr, .length = len, .lkey = lkey };
	struct ibv_send_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = wr_id;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.opcode = IBV_WR_SEND;
	wr.send_flags = IBV_SEND_SIGNALED | (inline_data ? IBV_SEND_INLINE : 0);
	return ibv_post_send(qp, &wr, &bad);
}

// Posts one receive buffer to the shared receive queue.
int dwcp_rdma_post_recv(struct dwcp_rdma *r, uint64_t wr_id, void *addr, uint32_t len,
			uint32_t lkey)
{
	struct ibv_sge sge = { .addr = (uintptr_t)addr, .length = len, .lkey = lkey };
	struct ibv_recv_wr wr, *bad = NULL;
	memset(&wr, 0, sizeof(wr));
	wr.wr_id = wr_id;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	return ibv_post_srq_recv(r->srq, &wr, &bad);
}

// Polls up to `n` (at most 64) completions into `out`; the count, or a negative value.
int dwcp_rdma_poll(struct dwcp_rdma *r, struct dwcp_wc *out, int n)
{
	struct ibv_wc wc[64];
	if (n > 64)
		n = 64;
	int got = ibv_poll_cq(r->cq, n, wc);
	for (int i = 0; i < got; i++) {
		out[i].wr_id = wc[i].wr_id;
		out[i].status = wc[i].status;
		out[i].opcode = wc[i].opcode;
		out[i].byte_len = wc[i].byte_len;
		out[i].qp_num = wc[i].qp_num;
	}
	return got;
}

const char *dwcp_rdma_wc_status_str(uint32_t status)
{
	return ibv_wc_status_str((enum ibv_wc_status)status);
}

size_t dwcp_sizeof_dwcp_wc(void)
{
	return sizeof(struct dwcp_wc);
}
