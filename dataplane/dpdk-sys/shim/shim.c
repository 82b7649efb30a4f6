/* A small C layer over DPDK 22.11 for the dpdk-sys crate: DPDK's fast-path functions are
 * `static inline` in its headers (rx/tx burst, mbuf alloc/free/data), so they are wrapped
 * here as real functions; port set-up is gathered into one call with plain arguments so the
 * Rust side needs no DPDK structure layouts. Every function returns 0 or a count on success
 * and a negative errno (or NULL) on failure; errors are also written as text to `err`. */
#define ALLOW_EXPERIMENTAL_API 1
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

int dwcp_eal_init(int argc, char **argv) {
    int r = rte_eal_init(argc, argv);
    return r < 0 ? -rte_errno : r;
}

int dwcp_eal_cleanup(void) { return rte_eal_cleanup(); }

const char *dwcp_strerror(int e) { return rte_strerror(e < 0 ? -e : e); }

int dwcp_thread_register(void) {
    return rte_thread_register() < 0 ? -rte_errno : (int)rte_lcore_id();
}

unsigned dwcp_port_count(void) { return rte_eth_dev_count_avail(); }

int dwcp_port_by_name(const char *name, uint16_t *port) {
    return rte_eth_dev_get_port_by_name(name, port);
}

int dwcp_port_name(uint16_t port, char *name, size_t len) {
    char buf[RTE_ETH_NAME_MAX_LEN];
    int r = rte_eth_dev_get_name_by_port(port, buf);
    if (r == 0) snprintf(name, len, "%s", buf);
    return r;
}

int dwcp_port_socket(uint16_t port) { return rte_eth_dev_socket_id(port); }

struct rte_mempool *dwcp_pool_create(const char *name, unsigned n, unsigned cache,
                                     unsigned data_room, int socket) {
    return rte_pktmbuf_pool_create(name, n, cache, 0, (uint16_t)data_room, socket);
}

/* Configures `port` with `queues` RX and TX queues (RSS over IP addresses and UDP ports
 * when more than one, as far as the NIC can hash them), sets the MTU, checksum offloads the
 * NIC has, and starts it. */
int dwcp_port_setup(uint16_t port, uint16_t queues, uint16_t rx_desc, uint16_t tx_desc,
                    struct rte_mempool *pool, uint16_t mtu, char *err, size_t errlen) {
    struct rte_eth_dev_info info;
    struct rte_eth_conf conf;
    int r;
    memset(&conf, 0, sizeof(conf));
    r = rte_eth_dev_info_get(port, &info);
    if (r != 0) {
        snprintf(err, errlen, "cannot read device info: %s", rte_strerror(-r));
        return r;
    }
    if (queues > info.max_rx_queues || queues > info.max_tx_queues) {
        snprintf(err, errlen, "%u queues asked, the device has %u RX and %u TX", queues,
                 info.max_rx_queues, info.max_tx_queues);
        return -EINVAL;
    }
    if (queues > 1) {
        uint64_t want = RTE_ETH_RSS_IP | RTE_ETH_RSS_UDP;
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = want & info.flow_type_rss_offloads;
    }
    uint64_t tx_ck = RTE_ETH_TX_OFFLOAD_IPV4_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM;
    conf.txmode.offloads = info.tx_offload_capa & tx_ck;
    uint64_t rx_ck = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM;
    conf.rxmode.offloads = info.rx_offload_capa & rx_ck;
    r = rte_eth_dev_configure(port, queues, queues, &conf);
    if (r != 0) {
        snprintf(err, errlen, "configure: %s", rte_strerror(-r));
        return r;
    }
    if (mtu != 0 && (r = rte_eth_dev_set_mtu(port, mtu)) != 0 && r != -ENOTSUP) {
        snprintf(err, errlen, "MTU %u: %s", mtu, rte_strerror(-r));
        return r;
    }
    uint16_t nrx = rx_desc, ntx = tx_desc;
    rte_eth_dev_adjust_nb_rx_tx_desc(port, &nrx, &ntx);
    int socket = rte_eth_dev_socket_id(port);
    for (uint16_t q = 0; q < queues; q++) {
        r = rte_eth_rx_queue_setup(port, q, nrx, socket, NULL, pool);
        if (r != 0) {
            snprintf(err, errlen, "RX queue %u: %s", q, rte_strerror(-r));
            return r;
        }
        r = rte_eth_tx_queue_setup(port, q, ntx, socket, NULL);
        if (r != 0) {
            snprintf(err, errlen, "TX queue %u: %s", q, rte_strerror(-r));
            return r;
        }
    }
    r = rte_eth_dev_start(port);
    if (r != 0) {
        snprintf(err, errlen, "start: %s", rte_strerror(-r));
        return r;
    }
    /* Broadcast and our own MAC are what the gateway needs; promiscuous mode is left off. */
    return 0;
}

int dwcp_port_stop(uint16_t port) { return rte_eth_dev_stop(port); }

int dwcp_port_mac(uint16_t port, uint8_t mac[6]) {
    struct rte_ether_addr a;
    int r = rte_eth_macaddr_get(port, &a);
    if (r == 0) memcpy(mac, a.addr_bytes, 6);
    return r;
}

uint64_t dwcp_port_offloads(uint16_t port, int tx) {
    struct rte_eth_conf conf;
    if (rte_eth_dev_conf_get(port, &conf) != 0) return 0;
    return tx ? conf.txmode.offloads : conf.rxmode.offloads;
}

int dwcp_link(uint16_t port, int *up, uint32_t *speed_mbps) {
    struct rte_eth_link link;
    int r = rte_eth_link_get_nowait(port, &link);
    if (r == 0) {
        *up = link.link_status == RTE_ETH_LINK_UP;
        *speed_mbps = link.link_speed;
    }
    return r;
}

/* Extended statistics: with names == NULL returns the count; else fills up to n. */
int dwcp_xstats(uint16_t port, char (*names)[64], uint64_t *values, unsigned n) {
    if (names == NULL) return rte_eth_xstats_get(port, NULL, 0);
    struct rte_eth_xstat_name xn[n];
    struct rte_eth_xstat xv[n];
    int c = rte_eth_xstats_get_names(port, xn, n);
    if (c < 0 || (unsigned)c > n) return c < 0 ? c : -ENOSPC;
    int v = rte_eth_xstats_get(port, xv, n);
    if (v < 0 || v != c) return v < 0 ? v : -EAGAIN;
    for (int i = 0; i < c; i++) {
        snprintf(names[i], 64, "%s", xn[i].name);
        values[i] = xv[i].value;
    }
    return c;
}

uint16_t dwcp_rx_burst(uint16_t port, uint16_t q, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_rx_burst(port, q, pkts, n);
}

uint16_t dwcp_tx_burst(uint16_t port, uint16_t q, struct rte_mbuf **pkts, uint16_t n) {
    return rte_eth_tx_burst(port, q, pkts, n);
}

struct rte_mbuf *dwcp_mbuf_alloc(struct rte_mempool *pool) { return rte_pktmbuf_alloc(pool); }

void dwcp_mbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void dwcp_mbuf_free_bulk(struct rte_mbuf **m, unsigned n) { rte_pktmbuf_free_bulk(m, n); }

/* The first segment's data and length (multi-segment frames: the caller drops them). */
uint8_t *dwcp_mbuf_data(struct rte_mbuf *m, uint16_t *len, uint16_t *segs) {
    *len = m->data_len;
    *segs = m->nb_segs;
    return rte_pktmbuf_mtod(m, uint8_t *);
}

/* Room for `len` bytes at the end of an empty mbuf; NULL when it does not fit. */
uint8_t *dwcp_mbuf_append(struct rte_mbuf *m, uint16_t len) {
    return (uint8_t *)rte_pktmbuf_append(m, len);
}

unsigned dwcp_pool_avail(struct rte_mempool *pool) { return rte_mempool_avail_count(pool); }

/* Writable room after the data of a (fresh) mbuf. */
uint16_t dwcp_mbuf_tailroom(struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
