"""Learning on curate's shards: nets, loaders, the trainer, metrics and prediction (ARCHITECTURE.md section 7).

Every module here imports torch; nothing outside ``curate.learn`` and the bodies of the learn CLI commands
imports this package, so ``curate --help`` stays free of torch.
"""
