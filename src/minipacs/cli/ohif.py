"""`minipacs ohif install [--dir DIR] [--version V]`: fetch the OHIF viewer with npm and point it at our DICOMweb.

``npm pack`` fetches ``@ohif/app`` (which ships a built ``dist/``) into DIR (default DATA/ohif, or ``ohif_dir`` from the
config); then DIR/app-config.js is written: one DICOMweb data source at this server's own ``/dicom-web``.
`minipacs serve` serves the viewer at /ohif/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from minipacs.config import Settings
from minipacs.web.ohif import CONFIG_NAME, dist_dir, install_dir, rebase

NEEDS_SETTINGS = True
#: the @ohif/app release tested with minipacs
OHIF_VERSION = "3.13.2"

APP_CONFIG = """/** OHIF configuration written by `minipacs ohif install`: minipacs's own DICOMweb, same origin. */
window.config = {
  routerBasename: '/ohif',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 3,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'minipacs',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'minipacs',
      configuration: {
        friendlyName: 'minipacs DICOMweb',
        name: 'minipacs',
        qidoRoot: window.location.origin + '/dicom-web',
        wadoRoot: window.location.origin + '/dicom-web',
        wadoUriRoot: window.location.origin + '/dicom-web/wado',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def register(sub: Any) -> None:
    p = sub.add_parser("ohif", help="install the OHIF viewer (served at /ohif/ by `minipacs serve`)")
    actions = p.add_subparsers(dest="ohif_action", required=True, metavar="ACTION")
    i = actions.add_parser("install", help="fetch @ohif/app with npm and write its app-config.js")
    i.add_argument("--config", type=Path, help="TOML configuration file")
    i.add_argument("--data", type=Path, dest="data_dir", help="data folder (default install place: DATA/ohif)")
    i.add_argument("--dir", type=Path, dest="ohif_dir", help="install folder [ohif_dir, or DATA/ohif]")
    i.add_argument("--version", dest="ohif_version", default=OHIF_VERSION, help=f"@ohif/app version [{OHIF_VERSION}]")


def write_config(folder: Path) -> Path:
    path = folder / CONFIG_NAME
    path.write_text(APP_CONFIG, encoding="utf-8")
    return path


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    assert settings is not None
    folder: Path = args.ohif_dir if args.ohif_dir is not None else install_dir(settings)
    npm = shutil.which("npm")
    if npm is None:
        print("minipacs: npm is not installed (Debian: apt-get install npm); the OHIF viewer needs it", file=sys.stderr)
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    # `npm pack`, not `npm install`: the built viewer is self-contained, its package.json's dependencies are
    # only for building it (and some are not even published at the same version: npm install fails ETARGET)
    command = [
        npm,
        "pack",
        f"@ohif/app@{args.ohif_version}",
        "--pack-destination",
        str(folder),
        "--loglevel=error",
        "--json",
    ]
    print(f"minipacs: {' '.join(command)}", file=sys.stderr)
    done = subprocess.run(command, check=False, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        print("minipacs: npm pack failed; OHIF not installed", file=sys.stderr)
        return 1
    try:
        tarball = folder / json.loads(done.stdout)[0]["filename"].replace("@", "").replace("/", "-")
    except (ValueError, LookupError, TypeError):
        tarball = folder / f"ohif-app-{args.ohif_version}.tgz"
    if not tarball.is_file():
        print(f"minipacs: npm pack did not leave {tarball}", file=sys.stderr)
        return 1
    shutil.rmtree(folder / "package", ignore_errors=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(folder, members=[m for m in tar.getmembers() if m.name.startswith("package/")], filter="data")
    tarball.unlink()
    dist = dist_dir(folder)
    if dist is None:
        print(f"minipacs: npm pack finished but {folder}/package/dist/index.html is missing", file=sys.stderr)
        return 1
    rebase(dist)
    write_config(folder)
    print(
        f"OHIF {args.ohif_version} installed in {folder.resolve()}; `minipacs serve` shows it at /ohif/"
        + ("" if args.ohif_dir is None else f' (set ohif_dir = "{folder.resolve()}" in the config)')
    )
    return 0
