"""Layer implementations (neuron); see base.py for the contract."""
