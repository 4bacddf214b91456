// Small SVG line charts of the totals the admin event stream sends, drawn
// by hand: one function, no chart library.

export function perInterval(points, key) {
  return points.slice(1).map((p, i) => Math.max(0, p[key] - points[i][key]));
}

export function perSecond(points, key) {
  return points.slice(1).map((p, i) => {
    const seconds = (p.at - points[i].at) / 1000;
    return seconds > 0 ? Math.max(0, p[key] - points[i][key]) / seconds : 0;
  });
}

/** A line chart of one or more series over the kept history, in SVG. */
export function chart(container, series, history) {
  const ns = 'http://www.w3.org/2000/svg';
  const [width, height, pad] = [300, 120, 4];
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('role', 'img');
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  svg.setAttribute('aria-label', `${container.previousElementSibling?.textContent ?? 'chart'}: highest ${Math.round(max)}`);
  const axis = document.createElementNS(ns, 'line');
  for (const [k, v] of [['x1', 0], ['x2', width], ['y1', height - pad], ['y2', height - pad]]) axis.setAttribute(k, v);
  axis.setAttribute('class', 'axis');
  svg.append(axis);
  for (const { values, color } of series) {
    if (values.length < 2) continue;
    const step = width / (history - 1);
    const start = width - step * (values.length - 1);
    const points = values.map((v, i) =>
      `${(start + i * step).toFixed(1)},${(height - pad - (v / max) * (height - 2 * pad - 12)).toFixed(1)}`);
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', points.join(' '));
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', color);
    line.setAttribute('stroke-width', '1.5');
    line.setAttribute('vector-effect', 'non-scaling-stroke');
    svg.append(line);
  }
  const label = document.createElementNS(ns, 'text');
  label.setAttribute('x', 2);
  label.setAttribute('y', 10);
  label.textContent = `max ${max < 10 ? max.toFixed(1) : Math.round(max)}`;
  svg.append(label);
  container.replaceChildren(svg);
}

