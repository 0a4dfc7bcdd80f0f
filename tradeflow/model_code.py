"""MLflow models-from-code entry: the logged model rebuilds ``TradingAgentModel`` from this file
(no pickled Python object in the model, so loading runs only our reviewed code)."""

import mlflow

from tradeflow.model import TradingAgentModel

mlflow.models.set_model(TradingAgentModel())
