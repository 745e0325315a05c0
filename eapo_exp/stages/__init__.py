"""One module per pipeline stage; each is a function of its config slice and upstream artifacts."""
