"""tradeflow's own test double for upstream FinAgent's forecaster prompt (not upstream code).

At upstream's module path because that is the interface: ``tradeflow.engines.finagent.compat``
imports ``agents.forecaster`` from ``FINAGENT_BACKEND`` and calls its async ``analyze_and_predict``
for the prompt the review's forecaster role shows. The text starts ``STUB FORECASTER PROMPT`` so a
test (and a person) can tell it from upstream's.
"""

import json


async def analyze_and_predict(analysis_result):
    rating = analysis_result.get("final_decision", {}).get("rating", "hold")
    return (f"STUB FORECASTER PROMPT (rating {rating}) for this analysis:\n"
            + json.dumps(analysis_result, sort_keys=True)[:2000])
