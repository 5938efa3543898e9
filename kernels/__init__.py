"""Pure numpy kernels for the Falcon-H1 hybrid (Mamba2 + attention); no project imports.

Every kernel is a function over ``np.ndarray``; none keeps hidden state. Caches are passed in
and returned. Each fast kernel has a slow reference beside it (plain loops or the direct
recurrence) that the tests compare it with.

Dimension letters, used in every docstring and shape comment:

    b  batch rows                      t  query / sequence positions
    s  key positions (attention), or source position inside a chunk (SSD)
    l  target position inside a chunk  c  chunk index          q  chunk length
    h  heads (SSM heads in ssd.py, query heads in attention.py)
    g  groups (B/C groups in ssd.py, KV heads in attention.py)
    p  SSM head size                   n  SSM state size per group
    d  attention head size             e  channels (conv, hidden width)
    k  conv kernel width, or the k of top-k       v  vocabulary

    from deepconf.kernels.ssd import ssd_prefill, ssd_step
    y, state = ssd_prefill(x, dt_raw, B, C, A_log=A_log, dt_bias=dt_bias, D=D, chunk_size=64)
    y1, state = ssd_step(state, x1, dt1, B1, C1, A_log=A_log, dt_bias=dt_bias, D=D)
"""
