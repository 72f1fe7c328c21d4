"""What the trainer and the operator agree on, and all of the trainer the operator may read besides its
config, runnable check, checkpoint layout and CLI: the progress annotation's schema (`progress`) and the exit
statuses and termination-message marks a trainer pod ends with (`exits`). Pure and torch-free."""
