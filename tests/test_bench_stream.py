"""tools/bench_stream.py's arithmetic: the trainer's progress bar parsed, images/s and RSS per
tenth of the epoch (issue 16's flatness figures come from it)."""
from tools.bench_stream import BAR, tenths


def test_the_bar_is_parsed():
    m = BAR.search("epoch 3:  42%|████▎     | 17/40 [00:06<00:05,  4.29it/s]")
    assert tuple(map(int, m.groups())) == (3, 17, 40)


def test_tenths_rate_and_memory_and_a_last_print_short_of_the_total():
    # 2 steps a second, batch 8 (16 images/s); the last print says 99 of 100
    bar = [(i / 2, 0, i, 100) for i in range(1, 100)]
    rss = [(t, n, 100.0 + n, 50.0) for t, _, n, _ in bar]
    rows = tenths(bar, rss, batch=8)
    assert len(rows) == 10 and rows[-1]["step"] == 99
    assert all(abs(r["images_per_s"] - 16.0) < 1e-6 for r in rows)
    assert rows[4]["rss_main_mb"] == 150.0 and rows[4]["rss_worker_mb"] == 50.0
