/* The compiled fan-out: one call per incoming packet and simulcast layer forwards it to every
 * down track of that layer in the steady state (same source, in order, a known payload type,
 * not padding), as DownTrack.write_rtp would: header rewrite (SSRC, seq, ts, PT), the shared
 * rewritten extension block, VP8 picture id / TL0PICIDX munging, the NACK history, the
 * transport-wide seq, SRTP protect (through the very libsrtp context and function the Python
 * path uses: pylibsrtp's), and one sendmmsg for the batch.
 *
 * Anything else (a switch, a late packet, padding, an unknown PT, a packet without the
 * transport-wide element, a VP8 packet above the track's temporal cap) leaves the track's
 * state untouched and reports FP_PYTHON: the caller hands that track the packet through the
 * Python path. The per-track state lives in fp_track (Python mirrors it on demand,
 * trio_sfu.forwarding.fanout); the history rings and the transport sequencer's rings and
 * counts are the Python objects' own typed arrays. */

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include "fanout.h"

/* Mirrors rtp.twcc_sender.TransportSequencer._state. */
enum { TW_NEXT = 0, TW_PACKETS = 1, TW_BYTES = 2, TW_CLUSTER = 3 };

static void give_back(fp_track *t, int64_t seq)
{
    int64_t *state = t->tw_state;
    int64_t slot = seq & t->tw_mask;
    if (seq != state[TW_NEXT] - 1 || seq < 0 || t->tw_seq[slot] != seq)
        return;
    state[TW_BYTES] -= t->tw_size[slot];
    t->tw_seq[slot] = -1;
    state[TW_NEXT] = seq;
    state[TW_PACKETS] -= 1;
}

/* munge_vp8 (trio_sfu.forwarding.codec_keyframes), the same reading of the descriptor. */
static void munge_vp8(uint8_t *buf, int start, int end, int64_t pid_offset, int64_t tl0_offset,
                      int32_t *pid_out, int32_t *tl0_out)
{
    *pid_out = *tl0_out = -1;
    if (start < 0 || start + 1 >= end || !(buf[start] & 0x80))
        return;
    uint8_t ext = buf[start + 1];
    int pos = start + 2;
    if (ext & 0x80) {
        if (pos >= end)
            return;
        if (buf[pos] & 0x80) {
            if (pos + 1 >= end)
                return;
            int32_t pid = (int32_t)(((((buf[pos] & 0x7F) << 8) | buf[pos + 1]) + pid_offset) & 0x7FFF);
            buf[pos] = (uint8_t)(0x80 | (pid >> 8));
            buf[pos + 1] = (uint8_t)(pid & 0xFF);
            *pid_out = pid;
            pos += 2;
        } else {
            int32_t pid = (int32_t)(((buf[pos] & 0x7F) + pid_offset) & 0x7FFF);
            buf[pos] = (uint8_t)(pid & 0x7F);
            *pid_out = pid;
            pos += 1;
        }
    }
    if ((ext & 0x40) && pos < end) {
        int32_t tl0 = (int32_t)((buf[pos] + tl0_offset) & 0xFF);
        buf[pos] = (uint8_t)tl0;
        *tl0_out = tl0;
    }
}

/* vp8_temporal (trio_sfu.forwarding.codec_keyframes)'s TID: -1 when the descriptor has none. */
static int vp8_tid(const uint8_t *buf, int start, int end)
{
    if (start < 0 || start + 1 >= end || !(buf[start] & 0x80) || !(buf[start + 1] & 0x20))
        return -1;
    uint8_t ext = buf[start + 1];
    int pos = start + 2;
    if (ext & 0x80) {
        if (pos >= end)
            return -1;
        pos += (buf[pos] & 0x80) ? 2 : 1;
    }
    if (ext & 0x40)
        pos += 1;
    if (pos >= end)
        return -1;
    return buf[pos] >> 6;
}

static void account_send(fp_track *t, int ok, int err, int payload)
{
    if (ok) {
        t->packets_sent += 1;
        t->octets_sent += payload;
        t->udp_sent += 1;
        return;
    }
    give_back(t, t->pending_tw_seq);
    t->dropped_send_failed += 1;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS)
        t->udp_full += 1;
    else if (err != EBADF)
        t->udp_error += 1;
}

int fp_forward(const uint8_t *pkt, int len, int pay_start, int pay_end,
               const uint8_t *region, int region_len, int region_start, int region_end,
               int set_extension_bit, int tw_at, int tw_added,
               double now, fp_track **tracks, int n, uint8_t *scratch, int8_t *status)
{
    struct mmsghdr msgs[FP_MAX_BATCH];
    struct iovec iov[FP_MAX_BATCH];
    int index[FP_MAX_BATCH];
    int count = 0, handled = 0;

    if (n > FP_MAX_BATCH)
        return -1; /* the caller never arms more than FP_MAX_BATCH tracks per layer */
    /* The packet as the subscriber gets it: pkt[:region_start] + region + pkt[region_end:]. */
    int shift = region_len - (region_end - region_start);
    int out_len = len + shift;
    int usable = len >= 12 && out_len <= FP_MAX_PACKET && (pkt[0] >> 6) == 2 && region_start >= 12
                 && region_start <= region_end && region_end <= pay_start && pay_start < pay_end
                 && pay_end <= len && tw_at >= region_start && tw_at + 2 <= region_start + region_len;
    if (!usable) { /* nothing below may read a header that is not there */
        for (int i = 0; i < n; i++)
            status[i] = FP_PYTHON;
        return 0;
    }
    uint32_t ssrc = ((uint32_t)pkt[8] << 24) | ((uint32_t)pkt[9] << 16) | ((uint32_t)pkt[10] << 8) | pkt[11];
    uint32_t seq = ((uint32_t)pkt[2] << 8) | pkt[3];
    uint32_t timestamp = ((uint32_t)pkt[4] << 24) | ((uint32_t)pkt[5] << 16) | ((uint32_t)pkt[6] << 8) | pkt[7];
    int pt = pkt[1] & 0x7F;
    int tid = -2; /* read once, by the first VP8 track that asks */

    for (int i = 0; i < n; i++) {
        fp_track *t = tracks[i];
        status[i] = FP_PYTHON;
        if (!t->armed || ssrc != t->src_ssrc || t->pt_map[pt] < 0)
            continue;
        if (t->vp8 && t->max_tid < 3) {
            if (tid == -2)
                tid = vp8_tid(pkt, pay_start, pay_end);
            if (tid > t->max_tid)
                continue; /* above its temporal cap: Python drops it (closing the sequence gap) */
        }
        /* SequenceUnwrapper.unwrap, without recording (recorded once the packet is taken). */
        int64_t d = (int64_t)((seq - (uint64_t)t->unwrap_last) & 0xFFFF);
        if (d >= 0x8000)
            d -= 0x10000;
        int64_t in_ext = t->unwrap_last + d;
        if (in_ext <= t->highest_in || in_ext < t->source_start)
            continue; /* late (an older offset may apply) or too old: Python's business */

        uint8_t *out = scratch + (size_t)i * FP_SLOT;
        memcpy(out, pkt, (size_t)region_start);
        memcpy(out + region_start, region, (size_t)region_len);
        memcpy(out + region_start + region_len, pkt + region_end, (size_t)(len - region_end));
        if (set_extension_bit)
            out[0] |= 0x10;
        int64_t out_ext = in_ext - t->offset;
        uint32_t out_ts = (uint32_t)((timestamp + (uint64_t)t->ts_offset) & 0xFFFFFFFFu);
        out[1] = (uint8_t)((pkt[1] & 0x80) | (t->pt_map[pt] & 0x7F));
        out[2] = (uint8_t)((out_ext >> 8) & 0xFF);
        out[3] = (uint8_t)(out_ext & 0xFF);
        out[4] = (uint8_t)(out_ts >> 24);
        out[5] = (uint8_t)(out_ts >> 16);
        out[6] = (uint8_t)(out_ts >> 8);
        out[7] = (uint8_t)out_ts;
        out[8] = (uint8_t)(t->out_ssrc >> 24);
        out[9] = (uint8_t)(t->out_ssrc >> 16);
        out[10] = (uint8_t)(t->out_ssrc >> 8);
        out[11] = (uint8_t)t->out_ssrc;
        int32_t pid_out = -1, tl0_out = -1;
        if (t->vp8)
            munge_vp8(out, pay_start + shift, pay_end + shift, t->pid_offset, t->tl0_offset, &pid_out, &tl0_out);

        /* The state write_rtp leaves, in its order. */
        if (in_ext > t->unwrap_last)
            t->unwrap_last = in_ext;
        t->highest_in = in_ext;
        int64_t slot = out_ext & t->mask;
        t->h_ext[slot] = out_ext;
        t->h_layer[slot] = (int8_t)t->layer;
        t->h_src_ssrc[slot] = ssrc;
        t->h_in_seq[slot] = (uint16_t)seq;
        t->h_ts[slot] = out_ts;
        t->h_pid[slot] = pid_out;
        t->h_tl0[slot] = (int16_t)tl0_out;
        t->h_resent[slot] = -__builtin_inf();
        if (out_ext > t->last_seq) {
            t->last_seq = out_ext;
            if (pid_out >= 0)
                t->last_pid = pid_out;
            if (tl0_out >= 0)
                t->last_tl0 = tl0_out;
        }
        uint32_t ts_diff = out_ts - (uint32_t)t->last_ts;
        if (t->last_ts < 0 || (ts_diff > 0 && ts_diff < 0x80000000u)) {
            t->last_ts = out_ts;
            t->last_ts_at = now;
        }

        /* TransportSequencer.stamp_at */
        int64_t *tw = t->tw_state;
        int64_t tw_seq = tw[TW_NEXT];
        int64_t tw_slot = tw_seq & t->tw_mask;
        out[tw_at] = (uint8_t)((tw_seq >> 8) & 0xFF);
        out[tw_at + 1] = (uint8_t)(tw_seq & 0xFF);
        t->tw_seq[tw_slot] = tw_seq;
        t->tw_sent_at[tw_slot] = now;
        t->tw_size[tw_slot] = (uint32_t)out_len;
        t->tw_cluster[tw_slot] = (int32_t)tw[TW_CLUSTER];
        t->tw_reported[tw_slot] = 0;
        tw[TW_NEXT] = tw_seq + 1;
        tw[TW_PACKETS] += 1;
        tw[TW_BYTES] += out_len;
        t->tw_added += tw_added;
        t->pending_tw_seq = tw_seq;

        int protected_len = out_len;
        if (t->protect(t->srtp, out, &protected_len) != 0) {
            t->srtp_failed += 1;
            account_send(t, 0, 0, 0);
            status[i] = FP_FAILED;
            continue;
        }
        msgs[count].msg_hdr.msg_name = &t->addr;
        msgs[count].msg_hdr.msg_namelen = t->addr_len;
        iov[count].iov_base = out;
        iov[count].iov_len = (size_t)protected_len;
        msgs[count].msg_hdr.msg_iov = &iov[count];
        msgs[count].msg_hdr.msg_iovlen = 1;
        msgs[count].msg_hdr.msg_control = NULL;
        msgs[count].msg_hdr.msg_controllen = 0;
        msgs[count].msg_hdr.msg_flags = 0;
        index[count] = i;
        count++;
    }

    /* One sendmmsg per run of tracks on the same socket; a datagram the kernel refuses fails
     * alone (as a sendto would) and the rest are tried after it. */
    int first = 0;
    while (first < count) {
        int fd = tracks[index[first]]->fd;
        int last = first;
        while (last + 1 < count && tracks[index[last + 1]]->fd == fd)
            last++;
        int at = first;
        while (at <= last) {
            int done = sendmmsg(fd, &msgs[at], (unsigned)(last - at + 1), MSG_DONTWAIT);
            if (done < 0) {
                int err = errno;
                if (err == EINTR)
                    continue;
                fp_track *t = tracks[index[at]];
                account_send(t, 0, err, 0);
                status[index[at]] = FP_FAILED;
                at++;
                continue;
            }
            for (int k = at; k < at + done; k++) {
                fp_track *t = tracks[index[k]];
                account_send(t, 1, 0, pay_end - pay_start);
                status[index[k]] = FP_SENT;
            }
            at += done;
        }
        first = last + 1;
    }
    for (int i = 0; i < n; i++)
        handled += status[i] != FP_PYTHON;
    return handled;
}

/* DownTrack.write_rtp's first test for a track armed on another layer than `layer`: the packet
 * is dropped and counted. When its 0.1 s look at which layers arrive is due (or `layer` is
 * nearer the target than the fallback it forwards), the look is the one write_rtp would make:
 * `effective_for[target]` is what downtrack.effective_layer answers for that target at `now`
 * (-1: not known here). A look that finds the fallback unchanged is recorded and the packet
 * dropped here; a look that changes it (a keyframe to ask for, maybe this very layer) and a
 * target without an answer are FP_PYTHON: write_rtp decides. */
int fp_drop_other_layer(int layer, double now, double period, const int8_t *effective_for, int targets,
                        fp_track **tracks, int n, int8_t *status)
{
    int handled = 0;
    for (int i = 0; i < n; i++) {
        fp_track *t = tracks[i];
        int effective = t->effective_target, target = t->target_layer;
        status[i] = FP_PYTHON;
        if (!t->armed || layer == effective)
            continue;
        if (now - t->effective_checked_at >= period || (effective < layer && layer <= target)
            || (target <= layer && layer < effective)) {
            if (target < 0 || target >= targets || effective_for[target] != effective)
                continue;
            t->effective_checked_at = now;
        }
        t->dropped_other_layer += 1;
        status[i] = FP_SENT;
        handled++;
    }
    return handled;
}

int fp_set_address(fp_track *t, int family, const uint8_t *packed, int port)
{
    memset(&t->addr, 0, sizeof t->addr);
    if (family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&t->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        memcpy(&a->sin_addr, packed, 4);
        t->addr_len = sizeof *a;
        return 0;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&t->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        memcpy(&a->sin6_addr, packed, 16);
        t->addr_len = sizeof *a;
        return 0;
    }
    return -1;
}
