"""The session's frame protocol: the board's parser (tinymp_agent, MicroPython code) and the PC's
(tinymp.session.protocol) are separate implementations; each is checked against the other, the
CRC-32 against zlib and the bitwise fallback, and both parsers are fuzzed: only protocol errors,
always in bounded time."""
import io
import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinymp import tinymp_agent as A
from tinymp.session import protocol as P

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 63) - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=40),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=20)


def test_crc32_three_ways():
    data = bytes(range(256)) * 3 + b"tinymp"
    assert A._crc32_bitwise(data) == zlib.crc32(data) == P.crc32(data) == A.crc32(data)
    assert A._crc32_bitwise(b"123456789") == 0xCBF43926  # the CRC-32 check value
    # chaining, as the frame CRC over header then payload uses it
    assert A._crc32_bitwise(b"6789", A._crc32_bitwise(b"12345")) == 0xCBF43926


def test_frame_layout_by_hand():
    f = P.encode_frame(0x10, 0x1234, b"abc")
    assert f[:2] == b"\xa5T" and f[2] == 0x10 and f[3] == 0
    assert struct.unpack_from("<HI", f, 4) == (0x1234, 3)
    assert struct.unpack_from("<H", f, 10)[0] == zlib.crc32(f[:10]) & 0xFFFF
    assert f[12:15] == b"abc"
    assert struct.unpack_from("<I", f, 15)[0] == zlib.crc32(f[:15])
    assert len(f) == 19


@settings(max_examples=300, deadline=None)
@given(values, st.integers(0, 0xFFFF), st.integers(0, 0xFF))
def test_both_sides_agree(value, seq, ftype):
    pc_payload = P.pack(value)
    board_payload = bytes(A.encode(value))
    assert pc_payload == board_payload
    assert A.decode(pc_payload) == P.unpack(board_payload) == _norm(value)
    f_pc = P.encode_frame(ftype, seq, pc_payload)
    assert bytes(A.frame(ftype, seq, pc_payload)) == f_pc
    got = A.FrameReader(io.BytesIO(f_pc)).read()
    assert got[:3] == (ftype, seq, pc_payload)
    (fr,) = P.Decoder().feed(f_pc)
    assert (fr.type, fr.seq, fr.payload) == (ftype, seq, pc_payload)


def _norm(v):
    if isinstance(v, tuple):
        return [_norm(x) for x in v]
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def test_decoder_splits_and_noise():
    frames = [P.encode_frame(0x81, i, P.pack({"i": i, "b": bytes(i * 7)})) for i in range(20)]
    stream = b"MicroPython v1.28 raw REPL\r\n>OK" + b"".join(frames) + b"tail"
    for step in (1, 3, 17, 1000):
        d = P.Decoder()
        out = []
        for i in range(0, len(stream), step):
            out.extend(d.feed(stream[i:i + step]))
        assert [f.seq for f in out] == list(range(20))
        assert all(isinstance(f, P.Frame) for f in out)
        assert b"raw REPL" in bytes(d.noise)


def test_damage_is_detected_and_the_next_frame_survives():
    a = P.encode_frame(0x81, 1, P.pack("first"))
    b = P.encode_frame(0x81, 2, P.pack("second"))
    for bit in range(len(a) * 8):
        bad = bytearray(a)
        bad[bit // 8] ^= 1 << (bit % 8)
        out = P.Decoder().feed(bytes(bad) + b)
        good = [f for f in out if isinstance(f, P.Frame)]
        assert [f.seq for f in good] == [2], bit  # the damaged one never passes as a frame
        r = A.FrameReader(io.BytesIO(bytes(bad) + b))
        got = []
        while True:
            try:
                got.append(r.read()[1])
            except A.ProtocolError:
                continue
            except EOFError:
                break
        assert got == [2], bit


def test_board_parser_errors_name_the_fault():
    good = bytes(A.frame(0x01, 7, b""))
    bad_crc = bytearray(A.frame(0x01, 7, b"xyz"))
    bad_crc[13] ^= 0x20
    with pytest.raises(A.ProtocolError) as e:
        A.FrameReader(io.BytesIO(bytes(bad_crc))).read()
    assert e.value.args[0] == "crc" and e.value.args[2] == 7
    head = bytearray(good)
    head[6] ^= 0x01  # the length: the header check catches it
    with pytest.raises(A.ProtocolError) as e:
        A.FrameReader(io.BytesIO(bytes(head))).read()
    assert e.value.args[0] == "header" and e.value.args[2] is None
    big = bytes(A.frame(0x11, 3, bytes(2048)))
    with pytest.raises(A.ProtocolError) as e:
        A.FrameReader(io.BytesIO(big), max_payload=1024).read()
    assert e.value.args[0] == "too_long"


def _drain_board(data, max_payload=4096):
    r = A.FrameReader(io.BytesIO(data), max_payload=max_payload)
    n = 0
    while True:
        try:
            r.read()
        except A.ProtocolError:
            pass
        except EOFError:
            return n
        n += 1
        assert n <= len(data) + 1


def _mutate(data, ops):
    b = bytearray(data)
    for kind, pos, val in ops:
        if not b:
            break
        pos %= len(b)
        if kind == 0:
            b[pos] ^= 1 << (val % 8)
        elif kind == 1:
            del b[pos:pos + 1 + val % 16]
        elif kind == 2:
            b[pos:pos] = bytes([val]) * (1 + val % 5)
        else:
            b[pos:pos] = b[pos:pos + 1 + val % 24]  # duplicate a piece
    return bytes(b)


stream_of_frames = st.lists(
    st.tuples(st.integers(0, 0xFF), st.integers(0, 0xFFFF), values.map(P.pack)),
    min_size=1, max_size=6).map(lambda fs: b"".join(P.encode_frame(*f) for f in fs))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_of_frames, st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10 ** 6),
                                            st.integers(0, 255)), max_size=8))
def test_fuzz_both_parsers(data, ops):
    """Mutated frame streams: frames or protocol errors only, every byte consumed, in bounded
    time; any frame that survives carries a valid CRC and a payload that decodes or raises only
    the protocol's error."""
    bad = _mutate(data, ops)
    t0 = time.monotonic()
    _drain_board(bad)
    d = P.Decoder(max_payload=4096)
    for i in range(0, len(bad), 7):
        for ev in d.feed(bad[i:i + 7]):
            if isinstance(ev, P.Frame):
                try:
                    ev.value()
                except P.ProtocolError:
                    pass
                try:
                    A.decode(ev.payload)
                except ValueError:
                    pass
    assert time.monotonic() - t0 < 5.0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    t0 = time.monotonic()
    _drain_board(data)
    P.Decoder().feed(data)
    for dec, err in ((P.unpack, P.ProtocolError), (A.decode, ValueError)):
        try:
            dec(data)
        except err:
            pass
    assert time.monotonic() - t0 < 5.0


def test_value_decoders_refuse_bombs():
    # a list that claims 4 G items, deep nesting, a dict with a non-string key
    for blob in (b"l\xff\xff\xff\xff", b"l\x01\x00\x00\x00" * 50 + b"N",
                 b"d\x01\x00\x00\x00iAAAAAAAAN", b"s\x05\x00\x00\x00ab", b"\x00"):
        with pytest.raises(P.ProtocolError):
            P.unpack(blob)
        with pytest.raises(ValueError):
            A.decode(blob)


def test_the_agent_is_pasted_in_pieces_that_compile_alone():
    # a board without the frozen agent compiles it piece by piece (the raw REPL keeps one set of
    # globals): the pieces are the whole source, each compiles on its own, and run one after
    # the other they define what the module defines
    from tinymp.session import link
    src = link._agent_source()
    pieces = link.agent_chunks(most=8192)
    assert b"".join(pieces) == src and len(pieces) > 1
    import ast
    assert all(len(p) <= 8192 or len(ast.parse(p).body) == 1
               for p in pieces)  # only a single long statement (the Agent class) goes over
    g = {"__name__": "__main__"}
    for p in pieces:
        exec(compile(p, "<board>", "exec"), g)
    names = {k for k in vars(A) if not k.startswith("__")}
    assert names <= set(g) and g["AGENT_VERSION"] == A.AGENT_VERSION
    assert set(g["Agent"].HANDLERS) == set(A.Agent.HANDLERS)
    # a source whose statements are all short: every piece within the limit
    small = b"".join(b"x%d = %d\n" % (i, i) for i in range(2000))
    cut = link.agent_chunks(small, most=1000)
    assert b"".join(cut) == small and max(map(len, cut)) <= 1000 and len(cut) > 10


def test_a_frame_the_heap_cannot_hold_is_dropped_with_one_error():
    # a frame the agent's limit allows can still find no room on a full or cut-up heap: the
    # MemoryError left serve() and the agent went, the PC saw a dead link. Now its bytes are
    # dropped in small pieces, the request gets a "memory" error, the next frame is read whole.
    big = P.encode_frame(P.SAMPLES_PUT, 7, bytes(range(256)) * 20)
    after = P.encode_frame(P.INFO, 8, b"")

    class Tight(A.FrameReader):
        def _read(self, n):
            if n > 4096:
                raise MemoryError
            return super()._read(n)

    r = Tight(io.BytesIO(big + after))
    with pytest.raises(A.ProtocolError) as e:
        r.read()
    assert e.value.args == ("memory", "no memory for a frame of 5120 bytes", 7)
    ftype, seq, payload, _ = r.read()
    assert (ftype, seq, bytes(payload)) == (P.INFO, 8, b"")
    # serve() answers it as an error of that request and goes on
    out = io.BytesIO()
    agent = A.Agent.__new__(A.Agent)
    agent.running = True
    agent.max_payload = 1 << 16
    agent.last = None
    replies = []
    agent.handle = lambda *a: replies.append(a[:2]) or b""
    agent.error = lambda seq, code, msg: replies.append((code, seq)) or b""
    agent._end_features = lambda keep=False: None
    real = A.FrameReader
    A.FrameReader = Tight
    try:
        A.serve(io.BytesIO(big + after), out, agent)
    finally:
        A.FrameReader = real
    assert replies == [("memory", 7), (P.INFO, 8)]
