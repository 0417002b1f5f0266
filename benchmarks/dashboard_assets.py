#!/usr/bin/env python
"""Make a copy of the asv dashboard that loads without internet access.

``asv publish`` writes a static site whose ``index.html`` loads jQuery, Flot,
Bootstrap and three small plugins from public CDNs. Where those cannot be
reached (CI, a sandbox) the page shows only "external dependencies failed to
load". This script copies the site and points each of those tags at a local
copy of the same library version, taken from its npm package (``npm pack``,
cached between runs); the files asv itself wrote are left untouched.

With ``--probe`` it also adds a small script that, once the page has drawn,
writes what it sees into the page as JSON (``<pre id="dashboard-probe">``):
the benchmark names listed and, for each Flot graph, its series, data points
(in all, and in the longest series) and the painted pixels of its canvas. ``check_dashboard.sh``
reads it back from Chromium's ``--dump-dom``.

Usage::

    python benchmarks/dashboard_assets.py asv_bench/html SITE_DIR [--probe]
"""

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# File name in asv's CDN URL -> (npm package@version, file inside the package).
# The versions are the ones asv 0.6's index.html asks for (stupidtable 1.0.1
# is not on npm; 1.1.3 has the same API).
ASSETS = {
    "jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "jquery.flot.min.js": ("flot@0.8.3", "jquery.flot.js"),
    "jquery.flot.time.min.js": ("flot@0.8.3", "jquery.flot.time.js"),
    "jquery.flot.selection.min.js": ("flot@0.8.3", "jquery.flot.selection.js"),
    "jquery.flot.categories.min.js": ("flot@0.8.3", "jquery.flot.categories.js"),
    "jquery.flot.orderBars.js": ("flot-orderbars@1.0.0", "js/jquery.flot.orderBars.js"),
    "stupidtable.min.js": ("stupid-table-plugin@1.1.3", "stupidtable.min.js"),
    "md5.min.js": ("blueimp-md5@2.19.0", "js/md5.min.js"),
    "bootstrap.min.js": ("bootstrap@3.1.1", "dist/js/bootstrap.min.js"),
    "bootstrap.min.css": ("bootstrap@3.1.1", "dist/css/bootstrap.min.css"),
}

# A <script src="http..."> or <link href="http..."> tag of asv's index.html.
_EXTERNAL_TAG = re.compile(
    r'<(?P<tag>script|link)\b[^>]*?\b(?:src|href)="(?P<url>https?://[^"]+)"[^>]*>'
)

PROBE = """
<script>
// Written by benchmarks/dashboard_assets.py --probe: reports what the page
// shows, for a headless browser's --dump-dom.
(function () {
  function painted(canvas) {
    var n = 0;
    try {
      var d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (var i = 3; i < d.length; i += 4) { if (d[i] !== 0) { n++; } }
    } catch (e) { n = -1; }
    return n;
  }
  function report() {
    var names = {};
    $("a, .benchmark-text, .benchmark-name, td, li").each(function () {
      var t = $(this).text().trim();
      if (/^[A-Za-z_][\\w]*(\\.[A-Za-z_][\\w]*)+$/.test(t)) { names[t] = true; }
    });
    var graphs = [];
    $(".flot-base").each(function () {
      var holder = $(this).parent();
      var plot = holder.data("plot");
      var points = 0, series = 0, longest = 0;
      if (plot) {
        $.each(plot.getData(), function (_, s) {
          var n = 0;
          $.each(s.data || [], function (_, p) { if (p && p[1] !== null) { n++; } });
          series++;
          points += n;
          longest = Math.max(longest, n);
        });
      }
      graphs.push({id: holder.attr("id") || "", width: this.width, height: this.height,
                   series: series, points: points, longest: longest,
                   painted: painted(this)});
    });
    var out = {url: location.href, names: Object.keys(names).sort(), graphs: graphs,
               title: document.title};
    var pre = document.getElementById("dashboard-probe");
    if (!pre) {
      pre = document.createElement("pre");
      pre.id = "dashboard-probe";
      pre.style.display = "none";
      document.body.appendChild(pre);
    }
    pre.textContent = JSON.stringify(out);
  }
  setInterval(function () { if (window.$) { report(); } }, 250);
})();
</script>
"""


def npm_package(spec, cache):
    """Unpacked directory of npm package ``spec`` (``name@version``), fetched once into ``cache``."""
    target = cache / spec.replace("/", "_")
    if (target / "package").is_dir():
        return target / "package"
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["npm", "pack", spec, "--silent", "--pack-destination", tmp],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        tgz = Path(tmp) / out[-1]
        unpack = Path(tempfile.mkdtemp(dir=cache))
        with tarfile.open(tgz) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tar.extractall(unpack, filter="data")
            else:
                tar.extractall(unpack)
        if target.exists():
            shutil.rmtree(target)
        unpack.rename(target)
    return target / "package"


def localize(src, dest, cache, probe=False):
    """Copy the site ``src`` to ``dest`` with every external asset served locally.

    Raises
    ------
    SystemExit
        If ``index.html`` references an external file not in :data:`ASSETS`
        (a newer asv with other dependencies: extend the table).
    """
    src, dest = Path(src), Path(dest)
    if not (src / "index.html").is_file():
        sys.exit(f"{src}/index.html not found: run 'asv publish' first")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    vendor = dest / "vendor"
    vendor.mkdir()
    cache.mkdir(parents=True, exist_ok=True)
    page = (dest / "index.html").read_text(encoding="utf-8")
    unknown = []

    def replace(match):
        url = html.unescape(match["url"])
        name = url.rsplit("/", 1)[-1]
        if name not in ASSETS:
            unknown.append(url)
            return match[0]
        spec, path = ASSETS[name]
        shutil.copyfile(npm_package(spec, cache) / path, vendor / name)
        if match["tag"] == "script":
            return f'<script src="vendor/{name}" onerror="js_load_failure()">'
        return f'<link rel="stylesheet" href="vendor/{name}">'

    page = _EXTERNAL_TAG.sub(replace, page)
    if unknown:
        sys.exit("no local copy known for: " + ", ".join(unknown))
    if probe:
        page = page.replace("</body>", PROBE + "</body>", 1)
    (dest / "index.html").write_text(page, encoding="utf-8")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="the html directory written by 'asv publish'")
    parser.add_argument("dest", help="where to write the self-contained copy (replaced)")
    parser.add_argument("--probe", action="store_true",
                        help="add the script that reports what the page shows")
    parser.add_argument(
        "--cache",
        default=os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                             "fusedgrad-dashboard-assets"),
        help="where the npm packages are kept between runs (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    localize(args.src, args.dest, Path(args.cache), probe=args.probe)


if __name__ == "__main__":
    main()
