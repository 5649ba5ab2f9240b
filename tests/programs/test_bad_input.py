"""Every program answers a missing, empty, truncated or wrong-kind input with one line."""
import tempfile

import pytest

from programs import bad_input

with tempfile.TemporaryDirectory() as _probe:
  _NAMES = [f'{program}: {what}' for program, what, _ in bad_input.cases(_probe)]


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  return {f'{p}: {w}': argv for p, w, argv in bad_input.cases(str(tmp_path_factory.mktemp('bad')))}


@pytest.mark.parametrize('name', _NAMES)
def test_one_error_line_exit_1_no_traceback(inputs, name):
  code, output = bad_input.run(inputs[name])
  assert code == 1, output[-3000:]
  assert len(bad_input.error_lines(output)) == 1, output[-3000:]
  assert 'Traceback' not in output and 'weights_only' not in output
