# Datasets: official archives downloaded and verified, then uint8 splits plus a manifest of
# checksums under resources/data/{dataset}/.


rule download:
    output:
        "resources/downloads/{archive}",
    log:
        "results/logs/download/{archive}.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        source=download_spec,
    script:
        "../workflow_scripts/download.py"


rule prepare_data:
    input:
        unpack(dataset_archive),
    output:
        expand("resources/data/{{dataset}}/{name}", name=SPLIT_FILES),
    log:
        "results/logs/prepare_data/{dataset}.log",
    conda:
        "../envs/vitpeft.yaml"
    params:
        spec=dataset_spec,
    script:
        "../workflow_scripts/prepare_data.py"
