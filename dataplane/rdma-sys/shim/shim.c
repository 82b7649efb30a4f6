// Non-inline entry points over rdma-core 44's verbs for the Rust side (decision 0028). The
// fast-path verbs are static inline in verbs.h, calling through the context's ops table; these
// wrappers are compiled against the real header, so they follow it. Built with
// RDMA_STATIC_PROVIDERS=rxe,mlx5: ibv_get_device_list then references those providers'
// verbs_provider_* symbols, which pulls them out of their static archives and registers them.

#include <errno.h>
#include <infiniband/verbs.h>
#include <stdint.h>
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
