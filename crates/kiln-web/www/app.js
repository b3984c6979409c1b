// The demo page: opens kiln's device, trains the digits classifier, runs the op table and
// ONNX models. With ?autotest=1 it runs the checks on its own and leaves the outcome in
// window.kilnResult (scripts/browser_test.py reads it); ?cpu=1 forces the CPU backend.
import wasmInit, * as kiln from './pkg/kiln_web.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let device = null;
let busy = false;

async function openDevice() {
  await wasmInit();
  const wantGpu = params.get('cpu') !== '1';
  if (wantGpu && !navigator.gpu) {
    $('note').textContent = 'This browser has no WebGPU (navigator.gpu is missing): kiln runs on its CPU backend instead.';
  }
  device = JSON.parse(await kiln.init(wantGpu && !!navigator.gpu));
  if (device.note) $('note').textContent = device.note;
  const mib = (b) => b === undefined ? '' : ` · largest binding ${(b / 2 ** 20).toFixed(0)} MiB`;
  $('device').textContent =
    `device: ${device.name || '(unnamed adapter)'} · ${device.kind} · backend ${device.backend}` +
    ` · ${device.device_type}${mib(device.max_storage_buffer_binding_size)}` +
    (device.features.length ? ` · features ${device.features.join(', ')}` : '');
}

function drawLoss(losses, perEpoch, accs) {
  const c = $('loss'), g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  const left = 40, right = c.width - 40, top = 10, bottom = c.height - 24;
  const hi = Math.max(...losses.slice(0, perEpoch), 0.1);
  g.strokeStyle = '#999'; g.fillStyle = '#555'; g.font = '11px sans-serif';
  g.beginPath(); g.moveTo(left, top); g.lineTo(left, bottom); g.lineTo(right, bottom); g.stroke();
  g.fillText(hi.toFixed(2), 4, top + 8); g.fillText('0', 28, bottom);
  g.fillText('loss (blue) and held-out accuracy (green) by step', left + 6, bottom + 16);
  const total = Math.max(losses.length, perEpoch * 2);
  const x = (i) => left + (right - left) * i / total;
  g.strokeStyle = '#2f6fde'; g.lineWidth = 1; g.beginPath();
  losses.forEach((l, i) => {
    const y = bottom - (bottom - top) * Math.min(l, hi) / hi;
    i ? g.lineTo(x(i), y) : g.moveTo(x(i), y);
  });
  g.stroke();
  g.strokeStyle = '#18794e'; g.fillStyle = '#18794e'; g.lineWidth = 2; g.beginPath();
  accs.forEach((a, e) => {
    const px = x((e + 1) * perEpoch), py = bottom - (bottom - top) * a;
    e ? g.lineTo(px, py) : g.moveTo(px, py);
  });
  g.stroke();
  g.fillText('100%', right + 4, top + 8);
  g.lineWidth = 1;
}

async function train() {
  const epochs = Number($('epochs').value) || 30;
  const sizes = JSON.parse(kiln.digits_sizes());
  const perEpoch = Math.ceil(sizes.train / 32);
  const losses = [], accs = [];
  const start = performance.now();
  $('acc').textContent = `training on ${sizes.train} images…`;
  const acc = await kiln.train_digits(epochs, (json) => {
    const e = JSON.parse(json);
    losses.push(...e.losses);
    accs.push(e.accuracy);
    drawLoss(losses, perEpoch, accs);
    const mean = e.losses.reduce((a, b) => a + b, 0) / e.losses.length;
    $('acc').textContent = `epoch ${e.epoch}/${epochs}: held-out accuracy ${(100 * e.accuracy).toFixed(2)}%`;
    $('trainlog').textContent = `mean loss ${mean.toFixed(4)} · ${sizes.test} held-out images`;
  });
  const seconds = (performance.now() - start) / 1000;
  $('acc').textContent = `trained ${epochs} epochs in ${seconds.toFixed(1)} s: held-out accuracy ${(100 * acc).toFixed(2)}%`;
  return { accuracy: acc, epochs, seconds, losses_first: losses[0], losses_last: losses[losses.length - 1] };
}

async function checkOps() {
  $('ops').textContent = '';
  const summary = JSON.parse(await kiln.check_ops((i, n, json) => {
    const r = JSON.parse(json);
    const line = document.createElement('div');
    line.className = r.passed ? 'ok' : 'fail';
    line.textContent = r.passed
      ? `✓ ${r.name}: ${r.samples} samples (${r.half_samples} more in f16/bf16), ${r.error_cases} error cases, largest difference from the CPU ${r.max_vs_cpu.toExponential(1)}`
      : `✗ ${r.name}: ${r.failure}`;
    $('ops').appendChild(line);
    $('checksum').textContent = `op ${i + 1} of ${n}…`;
  }));
  $('checksum').textContent =
    `${summary.passed} of ${summary.ops} ops agree with the references and the CPU backend` +
    (summary.needs_blocking_read ? `; ${summary.needs_blocking_read} need a blocking read-back (not possible in a page)` : '') +
    (summary.failed ? `; ${summary.failed} FAILED` : '');
  return summary;
}

// ---- ONNX ----
let modelBytes = null, modelInput = null;
const draw = $('draw'), pen = draw.getContext('2d');
function clearDrawing() { pen.fillStyle = '#000'; pen.fillRect(0, 0, draw.width, draw.height); }
clearDrawing();
let drawing = false;
draw.addEventListener('pointerdown', (e) => { drawing = true; stroke(e); });
draw.addEventListener('pointerup', () => { drawing = false; });
draw.addEventListener('pointermove', (e) => { if (drawing) stroke(e); });
function stroke(e) {
  const r = draw.getBoundingClientRect();
  pen.fillStyle = '#fff'; pen.beginPath();
  pen.arc(e.clientX - r.left, e.clientY - r.top, 10, 0, 2 * Math.PI); pen.fill();
}

async function loadModel(file) {
  modelBytes = new Uint8Array(await file.arrayBuffer());
  modelInput = JSON.parse(kiln.onnx_input(modelBytes));
  $('modelinfo').textContent = `${file.name}: input ${modelInput.name} [${modelInput.dims.join(', ')}]`;
}

async function classify() {
  if (!modelBytes) { $('top').textContent = 'choose a model first'; return; }
  const d = modelInput.dims.map((v, i) => v > 0 ? v : [1, 3, 224, 224][i] ?? 1);
  const [n, c, h, w] = d.length === 4 ? d : [1, 1, d[d.length - 2] || 28, d[d.length - 1] || 28];
  const small = document.createElement('canvas'); small.width = w; small.height = h;
  small.getContext('2d').drawImage(draw, 0, 0, w, h);
  const px = small.getContext('2d').getImageData(0, 0, w, h).data;
  const values = new Float32Array(n * c * h * w);
  for (let ch = 0; ch < c; ch++)
    for (let i = 0; i < h * w; i++) values[ch * h * w + i] = px[4 * i + Math.min(ch, 2)] / 255;
  const out = JSON.parse(await kiln.onnx_run(modelBytes, values, new Uint32Array(d.length === 4 ? d : [n, c, h, w].slice(4 - d.length))));
  // Probabilities as they are (a model ending in Softmax), else the softmax of the logits.
  const v = out.values, total = v.reduce((a, b) => a + b, 0);
  const probs = v.every((x) => x >= 0) && Math.abs(total - 1) < 1e-3;
  const m = Math.max(...v), e = probs ? v : v.map((x) => Math.exp(x - m)), s = probs ? 1 : e.reduce((a, b) => a + b, 0);
  const top = [...v.keys()].sort((a, b) => v[b] - v[a]).slice(0, 5);
  $('top').textContent = `${out.name} [${out.shape.join(', ')}]\n` +
    top.map((k) => `class ${k}: ${(100 * e[k] / s).toFixed(1)}%`).join('\n');
  return { output: out.name, shape: out.shape, top: top.map((k) => [k, e[k] / s]) };
}

async function compareOnnx(model, inputs, outputs) {
  const get = async (p) => new Uint8Array(await (await fetch(p)).arrayBuffer());
  const report = JSON.parse(await kiln.onnx_compare(await get(model),
    await Promise.all(inputs.map(get)), await Promise.all(outputs.map(get))));
  $('onnxcheck').textContent = `${model.split('/').pop()} against onnxruntime's output: ` + report.map((r) =>
    `${r.name} max |kiln−onnxruntime| ${r.max_diff.toExponential(2)} (values up to ${r.max_abs.toFixed(3)})`).join('; ');
  return report;
}

function guard(f) {
  return async () => {
    if (busy) return;
    busy = true;
    try { await f(); } catch (e) { $('note').textContent = `error: ${e}`; } finally { busy = false; }
  };
}

$('train').onclick = guard(train);
$('check').onclick = guard(checkOps);
$('clear').onclick = clearDrawing;
$('classify').onclick = guard(classify);
$('model').onchange = guard(() => loadModel($('model').files[0]));
$('image').onchange = guard(async () => {
  const bmp = await createImageBitmap($('image').files[0]);
  pen.drawImage(bmp, 0, 0, draw.width, draw.height);
});

async function autotest() {
  const result = { device };
  if (params.get('epochs')) $('epochs').value = params.get('epochs');
  try {
    result.ops = await checkOps();
    result.digits = await train();
    if (params.get('onnx')) {
      result.onnx = await compareOnnx(params.get('onnx'), params.getAll('onnx_in'), params.getAll('onnx_out'));
      // The classifier panel's own path: the model as a picked file, a drawn stroke as its image.
      const name = params.get('onnx').split('/').pop();
      await loadModel(new File([await (await fetch(params.get('onnx'))).arrayBuffer()], name));
      pen.fillStyle = '#fff'; pen.fillRect(60, 40, 100, 140);
      result.classify = await classify();
    }
  } catch (e) {
    result.error = String(e);
  }
  window.kilnResult = result;
}

await openDevice().catch((e) => { $('note').textContent = `could not start: ${e}`; window.kilnResult = { error: String(e) }; });
if (device && params.get('autotest') === '1') await autotest();
