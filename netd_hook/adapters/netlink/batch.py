"""The one-sendmsg batch writer: many requests, one ack each."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence

import anyio

from ...core.kernel import BatchResult as BatchResult  # re-exported: the adapters' callers get them here too
from ...core.kernel import Change as Change
from ...core.kernel import Dump as Dump
from ...core.kernel import HostRoute as HostRoute
from ...core.kernel import Item as Item
from ...core.kernel import Link as Link
from ...core.kernel import LocalAddress as LocalAddress
from ...core.kernel import Unsupported as Unsupported
from .sockets import _recv, grow_buffers
from .wire import HDR, NLM_F_ACK, NLMSG_ERROR, NetlinkError

ACK_ROOM = 1024  # receive buffer each ack costs (~830 bytes measured), rounded up


class BatchWriter:
    """Sends many requests in one sendmsg and collects what the kernel answers.

    The kernel processes every message of the buffer even after one fails, so the batch is not
    a transaction; `send` only reports, rollback is the caller's (see core/apply.py).

    Only the last message asks for an ack (NLM_F_ACK: set here; the encoder leaves it out). The
    kernel answers a failed message whether asked or not, and answers in order, so once the last
    message's answer is in, every message without an error before it succeeded. One ack instead
    of 2,000: each one is a datagram the kernel builds and Python receives and parses. (Messages
    that ask anyway are answered with acks that change nothing.)
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = 1

    async def send(self, messages: Sequence[bytes], timeout: float) -> BatchResult:
        result = BatchResult()
        n = len(messages)
        if not n:
            return result
        base = self._seq
        self._seq = (self._seq + n + 1) & 0x7FFFFFFF or 1
        buf = bytearray(b"".join(messages))
        offset = 0
        pack_into = struct.pack_into
        for i, m in enumerate(messages):
            pack_into("=I", buf, offset + 8, base + i)  # nlmsg_seq: one per message
            offset += len(m)
        last = offset - len(messages[-1])
        flags = struct.unpack_from("=H", buf, last + 6)[0]
        pack_into("=H", buf, last + 6, flags | NLM_F_ACK)  # the one message that asks for an ack
        grow_buffers(self.sock, rcvbuf=n * ACK_ROOM + (1 << 16), sndbuf=len(buf) + (1 << 16))
        self._drain()
        try:
            self.sock.send(buf)
        except OSError as exc:
            raise NetlinkError(f"batch send failed: {exc}", exc.errno or 0) from exc
        seen = bytearray(n)
        with anyio.move_on_after(timeout) as scope:
            while not seen[n - 1]:
                try:
                    data = _recv(self.sock)
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        result.unknown = "ENOBUFS: acks were dropped"
                        return result
                    raise NetlinkError(f"batch receive failed: {exc}", exc.errno or 0) from exc
                if data is None:
                    await anyio.wait_readable(self.sock)
                    continue
                self._answers(data, base, n, seen, result)
        if scope.cancelled_caught:
            result.unknown = f"timeout: no answer to the last of {n} messages after {timeout:.1f}s"
            return result
        answered = set(result.existed).union(i for i, _ in result.failed)
        result.acked = [i for i in range(n) if i not in answered]
        return result

    @staticmethod
    def _answers(data: bytes, base: int, n: int, seen: bytearray, result: BatchResult) -> None:
        """The errors (and the last message's ack) in `data`, by message index, each once."""
        offset, end = 0, len(data)
        while offset + HDR.size <= end:
            length, mtype, _flags, seq, _port = HDR.unpack_from(data, offset)
            if length < HDR.size:
                break
            i = seq - base
            if mtype == NLMSG_ERROR and 0 <= i < n and not seen[i]:
                seen[i] = 1
                (code,) = struct.unpack_from("=i", data, offset + HDR.size)
                if code == -errno.EEXIST:
                    result.existed.append(i)
                elif code != 0:
                    result.failed.append((i, -code))
            offset += (length + 3) & ~3

    def _drain(self) -> None:
        """Drop stale acks of an earlier batch that timed out. Dropped acks (ENOBUFS) are no
        matter; any other error is the socket's for good (EBADF, say): raised, never looped on."""
        while True:
            try:
                if _recv(self.sock) is None:
                    return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise NetlinkError(f"batch socket: {exc.strerror or exc}", exc.errno or 0) from exc
