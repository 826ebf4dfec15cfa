/* Line charts on uPlot (vendored): several series of (step, value) points on one x axis. */
"use strict";

const charts = (() => {
  const STEP_INCREMENTS = [1, 2, 5].flatMap((m) => [1, 10, 100, 1e3, 1e4, 1e5, 1e6].map((e) => m * e)).sort((a, b) => a - b);
  const palette = ["#4f46e5", "#ea580c", "#059669", "#db2777", "#0891b2", "#ca8a04", "#7c3aed", "#dc2626", "#2563eb", "#65a30d"];

  /** Align series of [x, y] points onto one sorted x array, with nulls where a series has no point. */
  function align(seriesList) {
    const xs = [...new Set(seriesList.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = seriesList.map((s) => {
      const column = new Array(xs.length).fill(null);
      for (const [x, y] of s.points) column[index.get(x)] = y === null || !isFinite(y) ? null : y;
      return column;
    });
    return [xs, ...ys];
  }

  /**
   * A number as an axis tick or a legend shows it: enough digits to tell neighbouring ticks `step`
   * apart, in scientific notation when small or large (a learning rate reads 2e-4, not 0).
   */
  function formatValue(value, step = null) {
    if (value === null || value === undefined || !isFinite(value)) return "–";
    if (value === 0) return "0";
    const size = Math.abs(value);
    const precise = step && isFinite(step) && step > 0 ? step : size / 100;
    if (size < 1e-3 || size >= 1e6) {
      const digits = Math.max(0, Math.min(6, Math.floor(Math.log10(size)) - Math.floor(Math.log10(precise) + 1e-9)));
      return value.toExponential(digits).replace(/\.?0+e/, "e").replace("e+", "e");
    }
    const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(precise) + 1e-9)));
    return Number(value.toFixed(decimals)).toLocaleString(undefined, { maximumFractionDigits: decimals });
  }

  const drawn = new WeakMap();
  /** The chart drawn in a container (for the page's tests and the console). */
  const of = (container) => drawn.get(container);

  /**
   * A chart in `container` that can be redrawn with new series:
   *   const chart = charts.line(node, {xLabel: "step"});  chart.draw([{label, points, color, dash, faint}], {log})
   */
  function line(container, { xLabel = "step", height = null } = {}) {
    let plot = null, shape = null;

    function options(seriesList, log) {
      return {
        width: container.clientWidth || 600,
        height: height || container.clientHeight || 240,
        cursor: { drag: { x: true, y: false } },
        scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
        // Steps are whole numbers: ticks at 1, 2, 5, 10, 20, 50, ... never 2.5.
        axes: [
          { label: xLabel, size: 40, incrs: STEP_INCREMENTS },
          { size: 60, space: 20, values: (_u, splits, _axis, _space, step) => splits.map((v) => formatValue(v, log ? null : step)) },
        ],
        legend: { live: true },
        series: [{ label: xLabel }, ...seriesList.map((s, i) => ({
          label: s.label,
          // A faint series (the raw loss under its smoothed line) stays plainly visible.
          stroke: s.faint ? hexAlpha(s.color || palette[i % palette.length], 0.5) : s.color || palette[i % palette.length],
          width: s.faint ? 1.5 : s.width ?? 2,
          value: (_u, v) => formatValue(v),
          dash: s.dash,
          spanGaps: true,
          points: { show: !!s.showPoints, size: s.pointSize || 5 },
          show: s.show !== false,
        }))],
      };
    }

    function draw(seriesList, { log = false } = {}) {
      const data = align(seriesList);
      if (log) for (let i = 1; i < data.length; i++) data[i] = data[i].map((y) => (y !== null && y <= 0 ? null : y));
      const newShape = JSON.stringify([seriesList.map((s) => [s.label, s.faint, s.dash, s.show]), log]);
      if (plot && newShape === shape) {
        plot.setData(data);
        return;
      }
      if (plot) plot.destroy();
      shape = newShape;
      plot = new uPlot(options(seriesList, log), data, container);
    }

    new ResizeObserver(() => plot && plot.setSize({ width: container.clientWidth, height: plot.height })).observe(container);
    const chart = { draw, get plot() { return plot; } };
    drawn.set(container, chart);
    return chart;
  }

  function hexAlpha(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  return { line, of, palette, align, formatValue };
})();
