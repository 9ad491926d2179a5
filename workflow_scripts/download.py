"""Rule download: fetch an official archive, resumably, and verify its published MD5."""

import _package  # noqa: F401  (puts the repository's vitpeft package on sys.path)

from vitpeft.data.download import download
from vitpeft.io import log_to_file

log_to_file(snakemake.log[0])
download(snakemake.params.source["url"], snakemake.output[0], snakemake.params.source["md5"])
