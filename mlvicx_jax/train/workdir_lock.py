"""One job per workdir: a lock file taken atomically and held for the run.

WORKDIR/run.lock holds {host, pid, started, argv}. It is created with
O_CREAT | O_EXCL, which is atomic on local filesystems and on NFS v3+
(what SLURM clusters share), so of two jobs started at once exactly one
gets it. A lock left by a dead process on this host (its pid no longer
runs) is stale: it is moved aside and taken over with a warning. A lock of
another host cannot be checked from here and stops the run, naming its
holder; delete the file if that job is known to be gone.

Object-store workdirs (gs://, s3://) have no atomic create-if-absent through
the filesystem API used here, so they get no lock: a warning says so, and
what guards such a run is the launcher (launch/tpu_pod.sh starts one job per
pod slice). Multi-process runs take the lock on process 0 only.
"""
import datetime
import json
import os
import socket
import sys

from absl import logging

LOCK_NAME = 'run.lock'


class WorkdirLockedError(RuntimeError):
  """Another job holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _describe(holder: dict) -> str:
  return (f"host {holder.get('host')}, pid {holder.get('pid')}, started "
          f"{holder.get('started')}")


class WorkdirLock:
  """Context manager: holds WORKDIR/run.lock for the duration of a run."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._held = False

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      json.dump({'host': socket.gethostname(), 'pid': os.getpid(),
                 'started': datetime.datetime.now().isoformat(timespec='seconds'),
                 'argv': sys.argv}, f)
    return True

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}  # half-written by a job that died while creating it

  def acquire(self) -> 'WorkdirLock':
    if '://' in self.workdir:
      logging.warning('%s is an object store: no workdir lock (no atomic create there); '
                      'make sure only one job trains into it', self.workdir)
      return self
    os.makedirs(self.workdir, exist_ok=True)
    if self._create():
      self._held = True
      return self
    holder = self._holder()
    same_host = holder.get('host') == socket.gethostname()
    if holder and not (same_host and not _alive(int(holder.get('pid', -1)))):
      raise WorkdirLockedError(
          f'{self.workdir} is in use by another job ({_describe(holder)}; lock file '
          f'{self.path}). Use another --workdir, or delete the lock file if that job is gone.')
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    stale = f'{self.path}.stale-{stamp}-{os.getpid()}'
    try:
      os.replace(self.path, stale)
    except FileNotFoundError:
      pass  # another job took it over first; the create below decides
    if not self._create():
      raise WorkdirLockedError(f'{self.workdir} was taken over by another job just now '
                               f'({_describe(self._holder())}; lock file {self.path})')
    logging.warning('Took over the stale lock of a dead process (%s) in %s; it is kept as %s',
                    _describe(holder) if holder else 'unreadable lock', self.workdir, stale)
    self._held = True
    return self

  def release(self) -> None:
    if self._held:
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
      self._held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
