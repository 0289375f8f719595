"""Measuring: hooks on a model's layers, the statistics they take on the device, and the typed records
(``records``) the rules judge. One module per job:

``hooks``        Hook / Hooks: hooks that own their handles
``sites``        layer discovery: which modules are measured, their kind and activation family
``recorder``     Recorder: the hooks that take per-site device statistics on each training pass
``weights``      what the weights say: recognised init scheme, identical (symmetric) units
``layer_stats``  device measurements + weights -> LayerStats records (host)
``io``           IOProbe, loss_kind, output_facts, input_facts: the model's input, output and loss
``records``      LayerStats, OutputFacts, InputFacts (no torch)
``history``      a Monitor's bounded per-step buffer and per-unit windows (device)
``carryover``    CarryProbe: was ``.grad`` reset between optimizer steps (zero_grad forgotten)

Nothing is imported here, so ``deepdiag.measure.records`` loads without torch.
"""
