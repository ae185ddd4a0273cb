"""What both papers' trainers share: the training loop (`core`), checkpoints (`checkpoint`), the
optimiser and schedules (`optim`) and the wall-time split (`timing`). Paper trainers live in their
wings, `fungizsl.fungalzsl` and `fungizsl.fungiclef`."""
