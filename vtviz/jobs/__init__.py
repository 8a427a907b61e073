"""Work over folders of photos, resumable and shardable: export, galleries, evaluation, map
evaluation."""
