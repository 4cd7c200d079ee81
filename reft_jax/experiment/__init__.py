"""One run of the pipeline around the stages: its context (`context`: typed config, datasets, batching), the
config's resolution at the edge (`resolve`), the methods compared (`methods`), each stage's cost (`cost`), the
report and plots (`report`) and the export of a model (`export`)."""
