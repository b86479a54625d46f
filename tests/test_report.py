import pytest

from prunekit.run.report import plot_layer_sparsity, plot_schedule, plot_sweep, render_report

DENSE = {
    "accuracy": 0.9800,
    "f1_macro": 0.9790,
    "precision_macro": 0.9810,
    "recall_macro": 0.9795,
    "sparsity": 0.0,
    "params": 50_000,
    "nonzero_params": 50_000,
    "macs": 49_000,
    "effective_macs": 49_000,
    "latency_ms": 0.040,
    "latency_ms_batch64": 0.200,
    "size_bytes": 200_000,
    "sparse_size_bytes": 201_000,
}
PRUNED = {
    **DENSE,
    "accuracy": 0.9750,
    "f1_macro": 0.9740,
    "sparsity": 0.9,
    "nonzero_params": 5_000,
    "effective_macs": 4_900,
    "latency_ms": 0.030,
    "latency_ms_batch64": 0.100,
    "sparse_size_bytes": 40_000,
}
METRICS = {"dense": DENSE, "pruned": PRUNED}
LAYERS = [
    {"name": "fc1.weight", "shape": [300, 64], "params": 19200, "nonzero_params": 1920,
     "sparsity": 0.9},
    {"name": "fc2.weight", "shape": [100, 300], "params": 30000, "nonzero_params": 2700,
     "sparsity": 0.91},
    {"name": "fc.weight", "shape": [10, 100], "params": 1000, "nonzero_params": 380,
     "sparsity": 0.62},
]
VERSIONS = {"torch": "2.x", "prunekit": "0.1.0"}


def render(**kwargs):
    options = dict(title="tiny", seed=3, versions=VERSIONS, command="prunekit run r.yaml")
    return render_report(METRICS, LAYERS, **{**options, **kwargs})


def rows(text: str) -> dict[str, list[str]]:
    """Table rows keyed by their first cell."""
    out = {}
    for line in text.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_before_after_table_has_every_metric_with_its_change():
    table = rows(render())
    assert table["accuracy"] == ["98.00%", "97.50%", "-0.50 pt"]
    assert table["F1 (macro)"] == ["97.90%", "97.40%", "-0.50 pt"]
    assert table["non-zero parameters"] == ["50,000", "5,000", "0.10x"]
    assert table["parameters"] == ["50,000", "50,000", "1.00x"]
    assert table["MACs (dense)"][2] == "1.00x"
    assert table["effective MACs (non-zero weights)"] == ["49,000", "4,900", "0.10x"]
    assert table["latency, batch 1"] == ["0.040 ms", "0.030 ms", "0.75x"]
    assert table["latency, batch 64"] == ["0.200 ms", "0.100 ms", "0.50x"]
    assert table["size on disk, dense encoding"][2] == "1.00x"
    assert table["size on disk, sparse encoding"][1].startswith("40,000 B")
    assert table["sparsity (prunable weights)"] == ["0.00%", "90.00%", "+90.00 pt"]


def test_per_layer_table_has_a_row_per_layer():
    table = rows(render())
    assert table["layer"] == ["shape", "params", "non-zeros", "sparsity"]
    assert table["`fc1.weight`"] == ["300 x 64", "19,200", "1,920", "90.00%"]
    assert table["`fc.weight`"] == ["10 x 100", "1,000", "380", "62.00%"]


def test_summary_chart_seed_versions_and_command():
    text = render(settings={"model": "lenet300"})
    assert text.startswith("# prunekit run: tiny\n")
    assert "accuracy 98.00% -> 97.50% (-0.50 pt)" in text
    assert "5.0x smaller on disk" in text  # 200,000 / 40,000
    assert "![per-layer sparsity](sparsity.png)" in text
    assert "Seed 3." in text and "```\nprunekit run r.yaml\n```" in text
    assert "torch 2.x, prunekit 0.1.0" in text
    assert "- model: lenet300" in text


def test_rows_missing_on_either_side_are_left_out():
    dense = {k: v for k, v in DENSE.items() if k not in ("latency_ms_batch64", "macs")}
    text = render_report({"dense": dense, "pruned": PRUNED}, LAYERS, title="t", seed=0,
                         versions={}, command="c", chart=None)
    table = rows(text)
    assert "latency, batch 64" not in table and "MACs (dense)" not in table
    assert "![" not in text


def test_chart_is_a_png_with_one_bar_per_layer(tmp_path):
    path = tmp_path / "out" / "sparsity.png"
    plot_layer_sparsity(LAYERS, path, target=0.88)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["sparsity.png"]  # no temp files left


def test_chart_handles_many_layers(tmp_path):
    many = [dict(LAYERS[0], name=f"features.{i}.weight", sparsity=i / 20) for i in range(20)]
    plot_layer_sparsity(many, tmp_path / "many.png")
    assert (tmp_path / "many.png").stat().st_size > 1000


# --- schedule, structure, recovery and sweep sections; their charts -----------------------

AGP = {"curve": {"name": "agp", "final": 0.9, "end": 100, "initial": 0.0, "start": 0,
                 "frequency": 10, "exponent": 3.0},
       "unit": "step", "steps": 120, "quantity": "sparsity",
       "measured": [[0, 0.0], [10, 0.243], [100, 0.9]]}
ROUNDS = [
    {"round": 0, "target": 0.0, "sparsity": 0.0, "accuracy": 0.98, "kept": True,
     "measured": 0.0, "quantity": "sparsity", "split": "val"},
    {"round": 1, "target": 0.5, "sparsity": 0.5, "accuracy": 0.97, "kept": True,
     "measured": 0.5, "quantity": "sparsity", "split": "val"},
    {"round": 2, "target": 0.9, "sparsity": 0.9, "accuracy": 0.5, "kept": False,
     "measured": 0.9, "quantity": "sparsity", "split": "val"},
]
CUT = {"groups_cut": 2, "units_removed": 200, "params_before": 50_000, "params_after": 20_000,
       "macs_before": 49_000, "macs_after": 19_000,
       "groups": [{"name": "fc1.weight:0", "size": 300, "kept": 150},
                  {"name": "fc2.weight:0", "size": 100, "kept": 50}],
       "verify": {"ok": True, "max_abs_diff": 1e-8, "message": "zero-out equivalence holds"}}
SHRUNK = {**DENSE, "accuracy": 0.97, "params": 20_000, "nonzero_params": 20_000,
          "macs": 19_000, "effective_macs": 19_000, "size_bytes": 80_000}


def test_schedule_section_with_rounds_and_chart():
    text = render_report({**METRICS, "run": {"schedule": AGP, "rounds": ROUNDS}}, LAYERS,
                         title="t", seed=0, versions={}, command="c")
    assert "## Schedule" in text and "Schedule `agp` (final 0.9, end 100" in text
    assert ("over 120 optimizer steps; the last round fell below the floor and was undone, so "
            "the run ends at round 1: sparsity 50.00%.") in text
    kept = render_report({**METRICS, "run": {"schedule": AGP, "rounds": ROUNDS[:2]}}, LAYERS,
                         title="t", seed=0, versions={}, command="c")
    assert "sparsity measured after the last cut: 90.00%." in kept
    table = rows(text)
    assert table["round"] == ["target", "sparsity", "accuracy (val)", "kept"]
    assert table["1"] == ["50.00%", "50.00%", "97.00%", "yes"]
    assert table["2"][-1] == "no: below the floor, undone"
    assert "![schedule](schedule.png)" in text


def test_structured_summary_structure_and_recovery_sections():
    metrics = {"dense": DENSE, "pruned": SHRUNK,
               "run": {"schedule": AGP, "cuts": [CUT],
                       "recovery": [{"reconstruct": {"layers": 3, "error_before": 0.4,
                                                     "error_after": 0.1},
                                     "bn_recalibration": {"layers": 2}}]}}
    text = render_report(metrics, LAYERS, title="t", seed=0, versions={}, command="c")
    assert ("Removed 60.00% of the parameters and 61.22% of the MACs: accuracy 98.00% -> "
            "97.00% (-1.00 pt), 2.5x smaller on disk.") in text
    assert ("| 1 | 2 | 200 | 50,000 -> 20,000 | 49,000 -> 19,000 | passed: zero-out "
            "equivalence holds |") in text
    assert "| 1 | `fc1.weight:0` | 300 | 150 |" in text
    assert "| 1 | reconstruct | 3 layers, relative output error 0.4000 -> 0.1000 |" in text
    assert "| 1 | bn recalibration | 2 batch-norm layers |" in text


def test_sweep_section_lists_every_point_after_the_dense_one():
    points = [{"label": f"sparsity {s}", "pruned": {**PRUNED, "sparsity": s, "accuracy": a}}
              for s, a in ((0.5, 0.979), (0.9, 0.95))]
    text = render_report({**METRICS, "points": points}, LAYERS, title="t", seed=0,
                         versions={}, command="c")
    table = rows(text)
    assert table["point"][:2] == ["sparsity", "accuracy"]
    assert table["dense"][:2] == ["0.00%", "98.00%"]
    assert table["sparsity 0.9"][:2] == ["90.00%", "95.00%"]
    assert "![accuracy vs sparsity](accuracy_vs_sparsity.png)" in text
    assert "![accuracy vs macs](accuracy_vs_macs.png)" in text


def test_schedule_chart_is_a_png(tmp_path):
    for schedule in (AGP, {**AGP, "curve": {"name": "steps", "sparsities": [0.5, 0.9],
                                           "start": 1, "frequency": 1},
                           "unit": "round", "steps": 2, "measured": [[1, 0.5], [2, 0.9]]},
                     {**AGP, "steps": 0, "measured": []}):
        path = tmp_path / "schedule.png"
        plot_schedule(schedule, path, title="t")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_sweep_charts_are_pngs_for_masks_and_for_channels(tmp_path):
    masks = [{"label": "a", "pruned": {**PRUNED, "sparsity": 0.5}},
             {"label": "b", "pruned": PRUNED}]
    channels = [{"label": "ratio 0.5", "pruned": SHRUNK}]
    for i, points in enumerate((masks, channels)):
        for x in ("sparsity", "macs"):
            path = tmp_path / f"{i}-{x}.png"
            plot_sweep(points, DENSE, path, x=x)
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="x must be"):
        plot_sweep(masks, DENSE, tmp_path / "bad.png", x="latency")
