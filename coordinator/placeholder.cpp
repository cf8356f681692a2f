namespace evald {}
