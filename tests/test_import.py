import subprocess
import sys

HEAVY = ["matplotlib", "torchvision", "timm", "transformers", "onnx", "onnxruntime", "sklearn",
         "torch_pruning", "pandas", "scipy"]


def test_import_prunekit_stays_light():
    code = (
        "import sys, prunekit; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import prunekit pulled in: {out.stdout.strip()}"


def test_public_names_are_exported():
    import prunekit as pk

    for name in ("sparsify", "sparsity_of", "bake", "list_criteria", "register_criterion"):
        assert callable(getattr(pk, name)), name
