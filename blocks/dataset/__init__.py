"""Sharded datasets: log-mel patches and teacher outputs of a whole corpus on disk.

* :mod:`.shards` — the format (Parquet shards + ``dataset.json``), checksums and the reader
  (:func:`~.shards.open_dataset`, the in-memory index, row reads, ``tf.data`` streaming).
* :mod:`.prepare` — ``cryblock prepare``: audio → patch shards → teacher shards, resumable.
* :mod:`.ray_runner` — the same jobs on a Ray cluster (``--runner ray``, extra ``cryblock[ray]``).
* :mod:`.audioset` — AudioSet segment CSVs mapped to the run's labels.
"""
