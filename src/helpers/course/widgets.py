"""The cost explorer of notebook 01: sliders drive a monthly-cost chart and the break-even points.

``CostExplorer`` keeps its logic in plain methods (``update()`` reads the sliders, recomputes, redraws), so
tests drive it by setting ``.value`` on a slider and reading ``.summary`` and ``.table``, no browser needed.
"""
from __future__ import annotations

import html

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from helpers.course.scenarios import PromptSizes, cheaper_from, course_approaches, scenario_table


class CostExplorer:
    """Monthly cost of prompting, RAG, fine-tuning and distillation as the sliders move."""

    def __init__(self, sizes: PromptSizes, *, max_queries: int = 2_000_000) -> None:
        self.sizes = sizes
        self.max_queries = max_queries
        style = {"description_width": "180px"}
        layout = widgets.Layout(width="520px")
        self.queries = widgets.IntSlider(100_000, min=1_000, max=max_queries, step=1_000, description="queries per month", style=style, layout=layout)
        # step 1 where the start is a measured value: a slider snaps its value to its step when it is drawn, which
        # would change the figures (and the break-even points) before anyone touched it
        self.input_tokens = widgets.IntSlider(sizes.short_input, min=20, max=4_000, step=1, description="input tokens per query", style=style, layout=layout)
        self.output_tokens = widgets.IntSlider(sizes.output, min=1, max=1_000, description="output tokens per query", style=style, layout=layout)
        self.examples = widgets.IntSlider(sizes.train_examples, min=10, max=50_000, step=1, description="training examples", style=style, layout=layout)
        self.tokens_per_example = widgets.IntSlider(sizes.train_tokens_per_example, min=20, max=4_000, step=1, description="tokens per example", style=style, layout=layout)
        self.epochs = widgets.IntSlider(3, min=1, max=25, description="epochs", style=style, layout=layout)
        self.retrains = widgets.IntSlider(4, min=0, max=52, description="retrains per year", style=style, layout=layout)
        self.sliders = [self.queries, self.input_tokens, self.output_tokens, self.examples, self.tokens_per_example, self.epochs, self.retrains]
        self.output = widgets.Output()
        self.text = widgets.HTML()
        for slider in self.sliders:
            slider.observe(lambda _change: self.update(), names="value")
        self.update()

    def approaches(self):
        return course_approaches(self.sizes, training_examples=self.examples.value, tokens_per_example=self.tokens_per_example.value,
                                 epochs=self.epochs.value, retrains_per_year=self.retrains.value,
                                 input_tokens=self.input_tokens.value, output_tokens=self.output_tokens.value)

    def update(self) -> None:
        approaches = self.approaches()
        volume = self.queries.value
        self.table = scenario_table(approaches, [volume])
        costs = {a.name: a.monthly_cost(volume) for a in approaches}
        cheapest = min(costs, key=costs.get)
        self.break_even = {a.name: cheaper_from(a, approaches[0]) for a in approaches[1:]}  # 0: any volume, None: never
        self.summary = {"queries_per_month": volume, "monthly_cost_usd": costs, "cheapest": cheapest, "break_even_vs_prompting": self.break_even}
        crossings = []
        for approach in approaches[1:]:
            volume_at = self.break_even[approach.name]
            if volume_at is None:
                crossings.append(f"{approach.name} never beats prompting")
            elif volume_at == 0:
                crossings.append(f"{approach.name} is cheaper than prompting at any volume")
            else:
                crossings.append(f"{approach.name} beats prompting from {volume_at:,.0f} queries/month")
        # one set of sentences: the widget shows them as HTML (names in bold), static() prints them as they are
        def first(strong) -> str:
            return (f"At {volume:,} queries/month: " + "; ".join(f"{strong(name)}: ${cost:,.2f}/month" for name, cost in costs.items())
                    + f". Cheapest: {strong(cheapest)}.")

        self.lines = [first(str), *crossings]
        self.text.value = "<br>".join([first(lambda name: f"<b>{html.escape(name)}</b>"), *map(html.escape, crossings)])
        with self.output:
            self.output.clear_output(wait=True)
            self._draw(approaches, volume)
            plt.show()

    def _draw(self, approaches, volume: int):
        figure, axis = plt.subplots()
        volumes = np.geomspace(1_000, self.max_queries, 60)  # log scales: every crossing is visible
        for approach in approaches:
            axis.plot(volumes, [approach.monthly_cost(v) for v in volumes], label=approach.name)
        axis.axvline(volume, color="grey", linestyle=":", linewidth=1)
        axis.set(xlabel="queries per month", ylabel="USD per month", title="Monthly cost (prices: data/prices.json)",
                 xscale="log", yscale="log")
        axis.legend()
        return figure

    def show(self) -> None:
        display(widgets.VBox([*self.sliders, self.text, self.output]))

    def static(self):
        """The explorer's sentences and chart at the sliders' current values, as plain output: what a saved notebook
        or an HTML report shows (a widget's saved form is only its name, ``VBox(...)``)."""
        print("\n".join(self.lines))
        return self._draw(self.approaches(), self.queries.value)
