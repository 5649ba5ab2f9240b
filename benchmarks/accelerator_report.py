"""The markdown page benchmarks/accelerator.py writes beside its JSON (docs/benchmarks.md pastes it)."""


def _f(value, spec='.2f', missing='-'):
  return missing if value is None else format(value, spec)


def markdown(out: dict) -> str:
  kind = 'CPU rows only' if out['platform'] == 'cpu' else out['device_kind']
  lines = [f"`{out['command']}` ({out['date']}, jax {out['jax']}, {out['device_count']} x "
           f"{out['device_kind']}, {out['host_cores']} host cores; {kind}; model "
           f"{out['model']}, {out['image_size']} px, views made on the device from uint8)", '',
           '| per-device batch | dtype | s/step | pairs/s | GFLOP/step (XLA) | MFU | '
           'compiled peak MiB | device peak MiB | compile s |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in out['steps']:
    if 'error' in r:
      lines.append(f"| {r['per_device_batch']} | {r['dtype']} | {r['error']} | | | | | | |")
      continue
    lines.append(f"| {r['per_device_batch']} | {r['dtype']} | {r['step_s']:.3f} | "
                 f"{r['pairs_per_s']:.1f} | {r['gflop_per_step']:.1f} | {_f(r['mfu'], '.1%')} | "
                 f"{r['compiled_peak_mib']:.0f} | {_f(r['device_peak_mib'], '.0f')} | "
                 f"{r['compile_s']:.1f} |")
  lines.append('')
  if out['platform'] != 'cpu':
    lines.append('- Device peak MiB: the device\'s high-water mark since the process began '
                 '(it only grows from row to row); compiled peak: arguments + outputs + '
                 'temporaries - donated.')
  for dtype, p in out['peaks'].items():
    lines.append(f"- MFU against {_f(p['tflops'], '.3g')} TFLOP/s {dtype} ({p['source']}).")
  c = out['compile']
  if c.get('warm_s'):
    lines.append(f"- Compile, first row: trace and lower {c['trace_lower_s']:.1f} s, then XLA "
                 f"{c['cold_s']:.1f} s with an empty persistent cache, {c['warm_s']:.1f} s "
                 f"reading it back ({c['entries']} entries); a restarted run pays trace and "
                 f"lower ({c['warm_trace_lower_s']:.1f} s) plus the warm figure.")
  if 'correctness' in out:
    k = out['correctness']
    lines.append(f"- Correctness, float32 step 0 at global batch {k['global_batch']}: loss "
                 f"{k['device']['loss']:.6f} on the device, {k['cpu']['loss']:.6f} on CPU "
                 f"(rel. diff {k['loss_rel_diff']:.1e}); gradient norm {k['device']['grad_norm']:.6g}"
                 f" vs {k['cpu']['grad_norm']:.6g} ({k['grad_norm_rel_diff']:.1e}).")
  if 'max_batch' in out:
    m = out['max_batch']
    probes = ', '.join(f"{p['per_device_batch']}: {p['compiled_peak_mib']:.0f} MiB "
                       f"{'fits' if p['fits'] else 'does not fit'}" for p in m['probes'])
    bound = (f", {m['smallest_not_fitting']} does not" if m.get('smallest_not_fitting')
             else ' (no probe above it failed)')
    lines.append(f"- Largest per-device batch ({m['dtype']}) under {m['limit_mib']:.0f} MiB: "
                 f"{m.get('largest_fitting', '-')}{bound}; a line through the measured "
                 f"batches predicts {m.get('predicted', '-')}; compile-only probes: "
                 f"{probes or 'none'}.")
  if 'remat' in out:
    r = out['remat']
    lines.append(f"- model.remat at per-device batch {r['per_device_batch']} ({r['dtype']}): "
                 f"compiled peak {r['none']['compiled_peak_mib']:.0f} MiB with 'none', "
                 f"{r['blocks']['compiled_peak_mib']:.0f} MiB with 'blocks'; step "
                 f"{_f(r['none'].get('step_s'), '.3f')} s vs {_f(r['blocks'].get('step_s'), '.3f')} s.")
  if 'checkpoint' in out:
    k = out['checkpoint']
    lines.append(f"- Checkpoint ({k['parameters']:,} parameters, LARS momentum, BN statistics): "
                 f"{k['mib']:.0f} MiB; the save call returned after {k['save_call_s']:.1f} s "
                 f"(async {k['async']}), files written after {k['written_s']:.1f} s (temp dir).")
  i = out['input']
  lines.append(f"- Input headroom: {i['host_cpu_ms_per_pair']:.2f} ms of host CPU per pair "
               f"(device path, {i['stored_size']} px stored) x {i['host_cores']} cores = "
               f"{i['host_can_feed_pairs_per_s']:.0f} pairs/s this host can feed; the step "
               f"consumes {i['step_consumes_pairs_per_s']:.1f} pairs/s per host "
               f"({_f(i['headroom'], '.1f')}x headroom).")
  for skipped in out['skipped']:
    lines.append(f'- Skipped: {skipped}.')
  lines.append(f"- Total {out['total_s']:.0f} s.")
  return '\n'.join(lines) + '\n'
