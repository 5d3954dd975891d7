"""The execution check's sandbox: results, errors, timeouts, crashes and memory limits, in pooled workers."""

import json
import os
import textwrap

import pytest

from lakesynth.tools.sandbox import Sandbox

TOOLS = """
import os
import time
from os import remove  # imported, not defined here: not callable through the sandbox


def get_weather(city, days=1, metric=True, hours=None, extra=None):
    return {"city": city, "days": days, "metric": metric, "hours": hours, "extra": extra, "temps": [20.5] * days}


def fail(reason):
    raise ValueError(f"bad input: {reason}")


def nap(seconds, tag):
    time.sleep(seconds)
    return tag


def die():
    os._exit(3)


def hog():
    return len(bytearray(2_000_000_000))


def pid():
    return os.getpid()


def odd():
    return {1, 2}


def _secret():
    return "hidden"
"""


@pytest.fixture(scope="module")
def tools(tmp_path_factory):
    path = tmp_path_factory.mktemp("sandbox") / "tools.py"
    path.write_text(TOOLS)
    return path


@pytest.fixture(scope="module")
def box(tools):
    with Sandbox(tools, workers=2, timeout_s=1.0, memory_mb=256) as sandbox:
        yield sandbox


def test_results_are_json_with_keyword_arguments_of_several_types(box):
    arguments = {"city": "Paris", "days": 2, "metric": False, "hours": None, "extra": {"tags": ["a", "é"]}}
    [outcome] = box.run([("get_weather", arguments)])
    assert outcome.ok and outcome.error is None and outcome.seconds >= 0
    assert json.loads(outcome.result) == {**arguments, "temps": [20.5, 20.5]}
    [odd] = box.run([("odd", {})])
    assert odd.ok and json.loads(odd.result) == "{1, 2}"  # not JSON: its repr, as a JSON string


def test_an_exception_fails_the_call_with_its_type_and_message(box):
    failed, wrong_args = box.run([("fail", {"reason": "x"}), ("get_weather", {"town": "Paris"})])
    assert not failed.ok and failed.result is None
    assert failed.error == "ValueError: bad input: x"
    assert wrong_args.error.startswith("TypeError: get_weather() got an unexpected keyword argument 'town'")


def test_a_timeout_fails_the_call_and_the_pool_keeps_working(box):
    slow, fast = box.run([("nap", {"seconds": 5, "tag": "slow"}), ("nap", {"seconds": 0, "tag": "fast"})])
    assert slow.error == "Timeout: no result within 1 s" and not slow.ok
    assert fast.ok and fast.result == '"fast"'
    [later] = box.run([("nap", {"seconds": 0, "tag": "later"})])
    assert later.ok and later.result == '"later"'


def test_a_crash_fails_the_call_and_later_calls_succeed(box):
    crashed, after = box.run([("die", {}), ("pid", {})])
    assert crashed.error == "Crash: the worker process died (exit code 3)"
    assert after.ok
    assert all(o.ok for o in box.run([("pid", {})] * 4))


def test_a_memory_bomb_is_an_error_not_a_dead_test_process(box):
    [bomb] = box.run([("hog", {})])
    assert not bomb.ok
    assert bomb.error.startswith(("MemoryError", "Crash")), bomb.error
    assert box.run([("pid", {})])[0].ok


def test_workers_are_reused(tools):
    with Sandbox(tools, workers=2) as sandbox:
        outcomes = sandbox.run([("pid", {})] * 20)
    assert all(o.ok for o in outcomes)
    assert 1 <= len({o.result for o in outcomes}) <= 2


def test_unknown_private_and_imported_names_are_error_outcomes(box):
    outcomes = box.run([("nope", {}), ("_secret", {}), ("remove", {"path": "x"}), ("pid", [1])])
    assert [o.ok for o in outcomes] == [False] * 4
    assert outcomes[0].error == "NameError: the module defines no public function 'nope'"
    assert "'_secret'" in outcomes[1].error and "'remove'" in outcomes[2].error
    assert outcomes[3].error == "TypeError: arguments must be a JSON object"


@pytest.mark.parametrize(
    "source, error",
    [
        ("def broken(:\n", "failed to import: SyntaxError"),
        ("raise RuntimeError('no config')\n", "failed to import: RuntimeError: no config"),
        ("import os\nos._exit(1)\n", "did not start"),
    ],
)
def test_a_module_that_does_not_import_fails_at_start(tmp_path, source, error):
    path = tmp_path / "broken_tools.py"
    path.write_text(source)
    with pytest.raises(ValueError, match=rf"broken_tools\.py.* {error}"):
        Sandbox(path, workers=1).start()


def test_outcomes_keep_input_order_when_calls_take_different_times(box):
    calls = [("nap", {"seconds": s, "tag": i}) for i, s in enumerate([0.3, 0.0, 0.2, 0.0, 0.1, 0.0])]
    outcomes = box.run(calls)
    assert [json.loads(o.result) for o in outcomes] == list(range(6))


def test_module_source_is_never_run_in_the_test_process(tmp_path):
    marker = tmp_path / "imported_by"
    path = tmp_path / "side_effect.py"
    path.write_text(
        textwrap.dedent(f"""
        import os
        with open({str(marker)!r}, "a") as f:
            f.write(f"{{os.getpid()}}\\n")

        def ok():
            return 1
    """)
    )
    with Sandbox(path, workers=1) as sandbox:
        assert [o.result for o in sandbox.run([("ok", {})] * 3)] == ["1", "1", "1"]
    assert marker.read_text().split() == [marker.read_text().split()[0]]  # imported once, by one worker
    assert int(marker.read_text().split()[0]) != os.getpid()


def test_a_caller_script_without_a_main_guard_runs_once(tmp_path):
    """As a wheel task's launcher may be: the workers must not run the caller's main script again."""
    import subprocess
    import sys

    functions = tmp_path / "fns.py"
    functions.write_text("def double(x: int) -> int:\n    return 2 * x\n")
    script = tmp_path / "task.py"
    script.write_text(
        "from lakesynth.tools import sandbox\n"
        "print('MAIN RAN', flush=True)\n"
        f"with sandbox.Sandbox({str(functions)!r}, workers=2) as box:\n"
        "    print(box.run([('double', {'x': 21})])[0].result, flush=True)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["MAIN RAN", "42"]
