"""Conversion: a dataset on disk -> a shard set (tars, .idx, card, manifest), and the check of
one (docs/architecture.md section 3). tools/make_shards.py and tools/verify_shards.py are its
entry points. Conversion never imports training (models/, train/) nor review (tools/review/)."""
