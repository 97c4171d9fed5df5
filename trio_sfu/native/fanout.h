/* The compiled fan-out's per-down-track state and entry points (see fanout.c).
 *
 * This header is also cffi's declaration of them: trio_sfu/native/build.py hands cffi the text
 * between the "cffi cdef" markers, with each #define's value and the fields after the "cffi:
 * private" marker left to the compiler, so the struct is written once, here. Keep that region
 * to what cffi's cdef parser reads: declarations and #define of constants, no other directives. */
#ifndef TRIO_SFU_FANOUT_H
#define TRIO_SFU_FANOUT_H

#include <stdint.h>
#include <sys/socket.h>

/* cffi cdef: begin */
#define FP_MAX_BATCH 1024
/* pylibsrtp's own limit: a 1500-octet buffer with room for the longest SRTP trailer. */
#define FP_MAX_PACKET (1500 - 144)
#define FP_SLOT 2048

enum { FP_SENT = 0, FP_PYTHON = 1, FP_FAILED = 2 };

typedef int (*fp_protect_fn)(void *ctx, void *rtp, int *len);

typedef struct {
    int armed;
    int layer;
    uint32_t src_ssrc;
    uint32_t out_ssrc;
    int16_t pt_map[128];
    int vp8;
    int max_tid; /* VP8: packets of a higher temporal id are left to Python (which drops them) */
    int64_t source_start, offset, ts_offset, pid_offset, tl0_offset;
    int64_t unwrap_last, highest_in, last_seq, last_ts;
    double last_ts_at;
    int32_t last_pid, last_tl0;
    int64_t packets_sent, octets_sent, dropped_send_failed;
    int64_t udp_sent, udp_full, udp_error, srtp_failed;
    int64_t mask;
    int64_t *h_ext;
    int8_t *h_layer;
    uint32_t *h_src_ssrc;
    uint16_t *h_in_seq;
    uint32_t *h_ts;
    int32_t *h_pid;
    int16_t *h_tl0;
    double *h_resent;
    int64_t *tw_state;
    int64_t tw_mask;
    int64_t *tw_seq;
    double *tw_sent_at;
    uint32_t *tw_size;
    int32_t *tw_cluster;
    int8_t *tw_reported;
    int64_t pending_tw_seq;
    int64_t tw_added;
    int target_layer, effective_target;
    double effective_checked_at;
    int64_t dropped_other_layer;
    void *srtp;
    fp_protect_fn protect;
    int fd;
    /* cffi: private (C only: fp_set_address fills them) */
    struct sockaddr_storage addr;
    socklen_t addr_len;
} fp_track;

int fp_forward(const uint8_t *pkt, int len, int pay_start, int pay_end,
               const uint8_t *region, int region_len, int region_start, int region_end,
               int set_extension_bit, int tw_at, int tw_added,
               double now, fp_track **tracks, int n, uint8_t *scratch, int8_t *status);
int fp_drop_other_layer(int layer, double now, double period, const int8_t *effective_for, int targets,
                        fp_track **tracks, int n, int8_t *status);
int fp_set_address(fp_track *t, int family, const uint8_t *packed, int port);
/* cffi cdef: end */

#endif
