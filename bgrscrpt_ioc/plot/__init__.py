"""The background block plot behind ``technique.muon.background_plot``.

- ``pyramid``: samples in fixed-size numpy ring buffers, drawn at pixel width
- ``sampler``: Channel Access monitors keeping the newest value of each PV
- ``autosave``: the IBEX data file, ``$ICPVARDIR/tmp/background_plot_data_NN.csv``
- ``block_plot``: the plot: sampling, run changes, the figure
- ``canvas``, ``png``: frames rendered in layers and sent as sparse PNG diffs
- ``server``: the WebAgg page, PNG snapshot and status, on a thread of its own
"""
