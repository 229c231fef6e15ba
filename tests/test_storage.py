import multiprocessing as mp

from alexnet_exp.study_store import open_storage


def _open_when_released(url, start, results):
    start.wait()  # all processes have imported everything: they touch the fresh database together
    try:
        open_storage(url, heartbeat_seconds=20)
        results.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {exc}")


def test_many_processes_can_open_one_fresh_storage_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_open_when_released, args=(url, start, results)) for _ in range(6)]
    for p in procs:
        p.start()
    import time

    time.sleep(8)  # let every process finish importing optuna and sqlalchemy
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok"] * 6, outcomes
