"""Test double of upstream's agents/forecaster.py interface (see ../../../README.md)."""

import json


async def analyze_and_predict(analysis_result):
    rating = analysis_result.get("final_decision", {}).get("rating", "hold")
    return ("STUB FORECASTER PROMPT. Sections: Technical Overview, Probability & Confidence, Final "
            f"Recommendation (system rating {rating}).\n" + json.dumps(analysis_result)[:2000])
