/* recvmmsg(2) for the UDP mux: drain up to `max` queued datagrams of a non-blocking socket in
 * one system call into a ring of fixed-size slots the caller owns and reuses.
 *
 * For datagram i: lengths[i] is its size, or -1 when it did not fit its slot (MSG_TRUNC: the
 * caller drops and counts it); keys[i] identifies an IPv4 source as one integer (1 << 48 |
 * address << 16 | port), so the caller maps it to its Python address tuple with one dict lookup;
 * keys[i] is 0 for any other family, whose raw sockaddr is in addrs[i] (addrlens[i] bytes).
 *
 * Returns how many datagrams were received (0 when none was queued), or -errno. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#define TRIO_SFU_RECV_MAX_BATCH 256

static int trio_sfu_recv_batch(int fd, char *ring, int slot_size, int max, int *lengths,
                               uint64_t *keys, struct sockaddr_storage *addrs, int *addrlens)
{
    struct mmsghdr msgs[TRIO_SFU_RECV_MAX_BATCH];
    struct iovec iovs[TRIO_SFU_RECV_MAX_BATCH];
    int i, n;

    if (max > TRIO_SFU_RECV_MAX_BATCH)
        max = TRIO_SFU_RECV_MAX_BATCH;
    if (max < 1 || slot_size < 1)
        return -EINVAL;
    memset(msgs, 0, sizeof(msgs[0]) * (size_t)max);
    for (i = 0; i < max; i++) {
        iovs[i].iov_base = ring + (size_t)i * (size_t)slot_size;
        iovs[i].iov_len = (size_t)slot_size;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
    }
    do {
        n = recvmmsg(fd, msgs, (unsigned int)max, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (i = 0; i < n; i++) {
        struct msghdr *h = &msgs[i].msg_hdr;
        lengths[i] = (h->msg_flags & MSG_TRUNC) ? -1 : (int)msgs[i].msg_len;
        addrlens[i] = (int)h->msg_namelen;
        if (addrs[i].ss_family == AF_INET) {
            const struct sockaddr_in *v4 = (const struct sockaddr_in *)&addrs[i];
            keys[i] = ((uint64_t)1 << 48) | ((uint64_t)ntohl(v4->sin_addr.s_addr) << 16)
                      | (uint64_t)ntohs(v4->sin_port);
        } else {
            keys[i] = 0;
        }
    }
    return n;
}
