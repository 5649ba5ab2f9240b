"""Shared pytest set-up.

grain worker processes need absl flags parsed (google/grain#1355), so parse
them once here for every test process.
"""
import sys

from absl import flags

if not flags.FLAGS.is_parsed():
  flags.FLAGS(sys.argv[:1], known_only=True)
