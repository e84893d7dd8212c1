"""`cdl export` and `cdl import`: model packages to take elsewhere."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from cdl.cli.common import EXIT_USER, console, err_console
from cdl.cli.experiments import KBServiceOption, kb_get
from cdl.cli.kube import KubeconfigOption, NamespaceOption


def export(
    name: str = typer.Argument(..., help="ModelVersion name."),
    output: Path = typer.Option(Path("."), "--output", "-o", help="Folder to write NAME-vN/ into."),
    namespace: str = NamespaceOption,
    kubeconfig: str = KubeconfigOption,
    kb_service: str = KBServiceOption,
) -> None:
    """Write a self-contained model package: code, weights, requirements, model card, report and
    a loader that needs only `pip install -r requirements.txt`.

    Example: cdl export news-classifier-v1 -o exports/
    """
    from cdl.errors import CdlError
    from cdl.kb.sharing import write_export

    mv = kb_get(kubeconfig, kb_service, f"/v1/namespaces/{namespace}/modelversions/{name}")
    base = f"/v1/models/{mv['model']}/versions/{mv['version']}"
    archive_bytes = kb_get(kubeconfig, kb_service, f"{base}/package", raw=True)
    report_md = kb_get(kubeconfig, kb_service, f"{base}/report.md", text=True) if mv.get("report") else None
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "package.tar.gz"
        archive.write_bytes(archive_bytes)
        try:
            folder = write_export(output, archive, mv, report_md)
        except CdlError as exc:
            err_console.print(str(exc))
            raise typer.Exit(EXIT_USER)
    console.print(f"exported {mv['model']} v{mv['version']} to {folder}", highlight=False)


def import_cmd(
    path: Path = typer.Argument(..., help="An exported folder or a package .tar.gz."),
    predict: str = typer.Option(None, "--predict", help="JSON rows to predict with the package's predictor."),
    predictor: str = typer.Option(None, "--predictor", help="module:Class (default: the manifest's)."),
) -> None:
    """Check a model package against its manifest, show what it is, and optionally predict with it
    here (its requirements must be installed in this environment).

    Example: cdl import news-v1/ --predict '[["Shares rose after the merger"]]'
    """
    from cdl.errors import CdlError
    from cdl.kb.sharing import check_import

    try:
        info = check_import(path)
    except CdlError as exc:
        err_console.print(str(exc))
        raise typer.Exit(EXIT_USER)
    console.print(f"{info.name} v{info.version}: {info.framework} {info.framework_version}, "
                  f"{len(info.files)} files verified, predictor {info.entrypoints.get('predictor', '-')}",
                  highlight=False)
    if predict is None:
        return
    try:
        rows = json.loads(predict)
    except json.JSONDecodeError as exc:
        err_console.print(f"--predict: not valid JSON: {exc}")
        raise typer.Exit(EXIT_USER)
    from cdl.runtime.package import import_from_package

    entry = predictor or info.entrypoints.get("predictor")
    if not entry:
        err_console.print("--predictor: the manifest names no predictor; pass module:Class")
        raise typer.Exit(EXIT_USER)
    model = import_from_package(info.root, entry)()
    model.load(str(info.root))
    console.print_json(json.dumps(model.predict(rows)))


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("import")(import_cmd)
