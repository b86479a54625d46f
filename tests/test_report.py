from prunekit.report import plot_layer_sparsity, render_report

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
