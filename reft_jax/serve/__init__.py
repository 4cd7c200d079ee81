"""`reft-jax serve`: the teacher's filter loaded once (`teacher_filter.TeacherFilter`, also `reft_jax.Filter`) and
served over HTTP (`app`), batching concurrent requests (`batcher`), with Prometheus metrics (`metrics`); the
command's options and server in `server`."""
