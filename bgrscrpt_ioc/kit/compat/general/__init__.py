"""The part of ISIS's InstrumentScripts ``general`` package that background scripts use."""
