"""The bad-input matrix (issue 15; testing/bad_inputs.py) through a real ComfyUI server of its own and the CLI:
every case succeeds with a sane result or is refused naming the input and the fix, the server keeps serving,
and nothing partial is left. benchmarks/robustness.py runs the heavy cases too and writes the results."""

import pytest

from onestep_sr.testing import comfy_host as host_lib
from onestep_sr.testing.bad_inputs import Matrix, all_cases

pytestmark = pytest.mark.server
CASES = all_cases()


@pytest.fixture(scope="module")
def matrix(comfy_host, comfy_dir, tmp_path_factory):  # comfy_host: ComfyUI importable for prompts
    base = host_lib.prepare_base_dir(tmp_path_factory.mktemp("comfy-matrix"))
    server = host_lib.ComfyServer(comfy_dir, base)
    yield Matrix(server, tmp_path_factory.mktemp("matrix-work"))
    server.stop()


def test_the_matrix_is_as_wide_as_the_issue_asks():
    surfaces = [case.surface for case in CASES]
    assert surfaces.count("server") >= 40 and surfaces.count("cli") >= 25
    assert sum(case.refused for case in CASES) >= 40 and sum(not case.refused for case in CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[f"{case.surface}: {case.name}" for case in CASES])
def test_case(matrix, case):
    outcome = matrix.run(case)
    assert outcome.passed, f"{outcome.problem}\n(message: {outcome.message})"
