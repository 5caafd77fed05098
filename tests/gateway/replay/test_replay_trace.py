"""Reading, writing and synthesizing traces."""
from __future__ import annotations

import gzip

import pytest

from gateway.replay import bundled
from gateway.replay.synth import rate_at, read_hourly, synthesize, synthesize_from_arrivals
from gateway.replay.trace import Trace, TraceError, read_trace, write_trace


def test_reads_plain_and_gzip_with_columns_by_name(tmp_path):
    text = "completion_tokens,arrival_s,prompt_tokens,extra\n5,0.5,10,x\n7,0.25,20,y\n"
    plain, gz = tmp_path / "t.csv", tmp_path / "t.csv.gz"
    plain.write_text(text)
    gz.write_bytes(gzip.compress(text.encode()))
    for path in (plain, gz):
        t = read_trace(str(path))
        assert list(t.arrival_s) == [0.25, 0.5]  # sorted by arrival
        assert list(t.prompt_tokens) == [20, 10]
        assert list(t.completion_tokens) == [7, 5]


def test_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrival_s,prompt_tokens,completion_tokens\n0.1,5,6\n0.2,five,6\n")
    with pytest.raises(TraceError, match=r"bad\.csv: line 3"):
        read_trace(str(bad))
    missing = tmp_path / "missing.csv"
    missing.write_text("arrival_s,prompt_tokens\n0.1,5\n")
    with pytest.raises(TraceError, match="missing column.*completion_tokens"):
        read_trace(str(missing))
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(str(tmp_path / "nope.csv"))


@pytest.mark.parametrize("row, message", [
    ("nan,10,5", r"line 3: arrival_s is seconds from the trace's start.*'nan'"),  # crashed the bucket loads
    ("-inf,10,5", r"line 3: .*'-inf'"),
    ("-5,10,5", r"line 3: .*'-5' \(subtract the first arrival time\)"),  # an index out of range in the optimum
    ("1700000000,10,5", r"line 3: .*'1700000000' \(subtract"),  # Unix time: out of memory after 26 s
    ("1,99999999999999999999,5", r"line 3: .*integers below 2\^63"),  # an OverflowError
])
def test_arrival_times_and_token_counts_the_replay_cannot_take_are_refused(tmp_path, row, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(f"arrival_s,prompt_tokens,completion_tokens\n0,10,5\n{row}\n")
    with pytest.raises(TraceError, match=message):
        read_trace(str(bad))


def test_a_corrupt_gzip_and_a_byte_order_mark(tmp_path):
    body = bytearray(gzip.compress(b"arrival_s,prompt_tokens,completion_tokens\n0,10,5\n1,20,5\n"))
    for i in range(12, len(body) - 8):  # the deflate stream garbled, the header intact
        body[i] ^= 0x55
    corrupt = tmp_path / "corrupt.csv.gz"
    corrupt.write_bytes(bytes(body))
    with pytest.raises(TraceError, match="corrupt.csv.gz: not a readable CSV"):  # was a zlib.error traceback
        read_trace(str(corrupt))
    bom = tmp_path / "bom.csv"  # as a spreadsheet saves it: the mark was read as part of 'arrival_s'
    bom.write_bytes(b"\xef\xbb\xbfarrival_s,prompt_tokens,completion_tokens\n0,10,5\n")
    assert list(read_trace(str(bom)).prompt_tokens) == [10]


def test_write_then_read_round_trips(tmp_path):
    t = Trace.from_rows([(0.0, 1, 2), (1.123456, 3, 4)])
    for name in ("t.csv", "t.csv.gz"):
        write_trace(str(tmp_path / name), t)
        back = read_trace(str(tmp_path / name))
        assert list(back.arrival_s) == list(t.arrival_s) and list(back.prompt_tokens) == [1, 3]


def test_hourly_shape_and_interpolation(tmp_path):
    path = tmp_path / "hourly.csv"
    path.write_text("model,hour,requests\na,0,3600\na,1,7200\nb,0,1\n")
    assert read_hourly(str(path), "a") == [3600.0, 7200.0]
    with pytest.raises(TraceError, match="no rows for model 'c'"):
        read_hourly(str(path), "c")
    shape = [3600.0, 7200.0]
    assert rate_at(shape, 0) == 1.0  # flat before the first hour's midpoint
    assert rate_at(shape, 3600) == pytest.approx(1.5)  # halfway between midpoints
    assert rate_at(shape, 7000) == 2.0


def test_synthesize_is_deterministic_and_follows_the_shape(tmp_path):
    shape = [1000.0, 4000.0, 1000.0]
    pairs = [(100, 10), (2000, 300), (50, 5)]
    a = synthesize(shape, pairs, scale=1.0, seed=5)
    b = synthesize(shape, pairs, scale=1.0, seed=5)
    c = synthesize(shape, pairs, scale=1.0, seed=6)
    assert list(a.arrival_s) == list(b.arrival_s) and list(a.arrival_s) != list(c.arrival_s)
    write_trace(str(tmp_path / "a.csv.gz"), a)
    write_trace(str(tmp_path / "b.csv.gz"), b)
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    assert set(zip(a.prompt_tokens, a.completion_tokens)) <= set(pairs)
    per_hour = [sum(1 for t in a.arrival_s if h * 3600 <= t < (h + 1) * 3600) for h in range(3)]
    assert per_hour[1] > 2 * per_hour[0] and per_hour[1] > 2 * per_hour[2]
    assert 0.9 * 6000 < len(a) < 1.1 * 6000  # linear between hour midpoints keeps the total: 6,000 expected
    peak = synthesize(shape, pairs, peak_per_hour=400.0, seed=5)
    assert 0.7 * 600 < len(peak) < 1.3 * 600


def test_clumped_arrivals_keep_the_volume_but_not_the_smoothness():
    shape = [3600.0] * 2
    pairs = [(100, 10)]
    plain = synthesize(shape, pairs, scale=1.0, seed=1)
    clumped = synthesize(shape, pairs, scale=1.0, seed=1, burst_mean=10, burst_spread_s=0.5)
    assert 0.85 * 7200 < len(clumped) < 1.15 * 7200
    assert list(clumped.arrival_s) == sorted(clumped.arrival_s)

    def busiest_second(trace):
        counts = {}
        for t in trace.arrival_s:
            counts[int(t)] = counts.get(int(t), 0) + 1
        return max(counts.values())

    assert busiest_second(clumped) > 2 * busiest_second(plain)
    again = synthesize(shape, pairs, scale=1.0, seed=1, burst_mean=10, burst_spread_s=0.5)
    assert list(again.arrival_s) == list(clumped.arrival_s)


def test_measured_peakedness_is_about_one_for_poisson_and_large_for_clumps():
    from gateway.replay.report import load_peakedness
    from routing_policies import EndpointSpec

    spec = EndpointSpec(1.0, 300.0, 0.02, context_window=8192)
    shape, pairs = [7200.0] * 2, [(100, 10), (1000, 200), (3000, 50)]
    plain = load_peakedness(synthesize(shape, pairs, scale=1.0, seed=2), spec)
    clumped = load_peakedness(synthesize(shape, pairs, scale=1.0, seed=2, burst_mean=8), spec)
    assert 0.8 < plain < 1.25
    assert clumped > 5


def test_a_real_hour_fills_each_synthetic_hour_without_a_silence_at_its_end():
    # the Azure code hour's arrivals span 3,436 s: laid as they are, every synthetic hour would end in
    # 164 s of silence that the real traffic does not have. They are stretched to the hour (4.8 %)
    source = read_trace(bundled.trace_path("azure-code"))
    trace = synthesize_from_arrivals([len(source)] * 3, source, scale=1.0, seed=1)
    assert len(trace) == 3 * len(source)
    for h in range(3):
        offsets = [t - h * 3600.0 for t in trace.arrival_s if h * 3600.0 <= t < (h + 1) * 3600.0]
        assert len(offsets) == len(source)
        assert 3600.0 - offsets[-1] < 2 * 3600.0 / len(source)  # about one mean gap, not minutes
        stretch = [(o / (t - source.arrival_s[0])) for o, t in zip(offsets[1:], source.arrival_s[1:])
                   if t - source.arrival_s[0] > 60.0]
        # one clock factor for the whole hour: every clump and gap keeps its place and shape
        assert min(stretch) == pytest.approx(max(stretch), rel=1e-6) and 1.0 < min(stretch) < 1.05
