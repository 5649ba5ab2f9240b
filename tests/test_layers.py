"""The package's import graph: no circle, no upward import, a report without JAX.

Layers, bottom to top: vocabulary and config_files <- data <- models, losses,
optim (with checkpoint and pretrained) <- train <- evaluate <- report <-
programs. synthetic/ sits beside data and is imported only by programs (the
demo, main's one smoke/demo call). Every import counts, also those inside
functions, since a lazy import is still a dependency.
"""
import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, 'mlvicx_jax')
PROGRAMS = ('mlvicx_jax.main', 'mlvicx_jax.demo', 'mlvicx_jax.cli', 'mlvicx_jax.gradcam',
            'mlvicx_jax.segment', 'mlvicx_jax.evaluate.__main__', 'mlvicx_jax.report.__main__',
            'mlvicx_jax.synthetic.__main__', 'mlvicx_jax.tools')
LAYERS = (('mlvicx_jax.vocabulary', 'mlvicx_jax.config_files', 'mlvicx_jax.storage'),
          ('mlvicx_jax.data',),
          ('mlvicx_jax.synthetic',),
          ('mlvicx_jax.models', 'mlvicx_jax.losses', 'mlvicx_jax.optim', 'mlvicx_jax.checkpoint',
           'mlvicx_jax.pretrained'),
          ('mlvicx_jax.train',),
          ('mlvicx_jax.evaluate',),
          ('mlvicx_jax.report',))


def _within(module: str, prefix: str) -> bool:
  return module == prefix or module.startswith(prefix + '.')


def layer(module: str) -> int:
  if module == 'mlvicx_jax' or any(_within(module, p) for p in PROGRAMS):
    return len(LAYERS)
  for rank, prefixes in enumerate(LAYERS):
    if any(_within(module, p) for p in prefixes):
      return rank
  raise AssertionError(f'{module} is in no layer: add it to LAYERS or PROGRAMS')


def modules() -> dict:
  """Dotted module name -> file, for every .py file of the package."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path[:-3], REPO).replace(os.sep, '.')
        found[dotted[:-len('.__init__')] if dotted.endswith('.__init__') else dotted] = path
  return found


def imports_of(module: str, source: str, is_package: bool, known) -> set:
  """The package modules one module's source imports, at any depth of its code."""
  package = module if is_package else module.rsplit('.', 1)[0]
  targets = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      targets.update(a.name for a in node.names if a.name.startswith('mlvicx_jax'))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')[:len(package.split('.')) - node.level + 1]
        base = '.'.join(parts + ([base] if base else []))
      if base.startswith('mlvicx_jax'):
        for alias in node.names:
          name = f'{base}.{alias.name}'
          targets.add(name if name in known else base)
  return targets - {module}


def import_graph(known: dict) -> dict:
  graph = {}
  for module, path in known.items():
    with open(path) as f:
      graph[module] = imports_of(module, f.read(), path.endswith('__init__.py'), known)
  return graph


def upward_imports(graph: dict) -> list:
  return [f'{m} (layer {layer(m)}) imports {t} (layer {layer(t)})'
          for m, targets in graph.items() for t in sorted(targets) if layer(t) > layer(m)]


@pytest.fixture(scope='module')
def graph():
  return import_graph(modules())


def test_no_module_imports_a_higher_layer(graph):
  assert not upward_imports(graph), '\n'.join(upward_imports(graph))


def test_the_check_sees_train_importing_evaluate(graph):
  fake = 'mlvicx_jax.train.fake'
  graph = dict(graph, **{fake: imports_of(
      fake, 'def f():\n  from mlvicx_jax.evaluate import metrics\n', False, modules())})
  assert upward_imports(graph) == [
      f'{fake} (layer 4) imports mlvicx_jax.evaluate.metrics (layer 5)']


def test_synthetic_data_is_reached_only_by_programs(graph):
  users = sorted(m for m, targets in graph.items()
                 if any(_within(t, 'mlvicx_jax.synthetic') for t in targets)
                 and not _within(m, 'mlvicx_jax.synthetic'))
  assert all(layer(m) == len(LAYERS) for m in users), users


def import_circles(graph: dict) -> list:
  """Tarjan's strongly connected components of more than one module."""
  index, low, stack, on_stack, circles = {}, {}, [], set(), []

  def visit(node):
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for target in graph.get(node, ()):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in on_stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        on_stack.discard(member)
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        circles.append(sorted(component))

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return circles


def test_no_import_circle(graph):
  assert not import_circles(graph), import_circles(graph)


def test_the_check_sees_a_circle(graph):
  """report_lib and plots once imported each other (one of them lazily)."""
  graph = dict(graph)
  graph['mlvicx_jax.report.summary'] = graph['mlvicx_jax.report.summary'] | {
      'mlvicx_jax.report.plots'}
  assert import_circles(graph) == [['mlvicx_jax.report.plots', 'mlvicx_jax.report.summary']]


def test_report_imports_no_jax():
  code = ('import sys; import mlvicx_jax.report, mlvicx_jax.report.plots, '
          'mlvicx_jax.report.__main__; '
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax')))")
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == '[]', out.stdout
