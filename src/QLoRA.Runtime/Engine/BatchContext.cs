using QLoRA.Runtime.Tensors;

namespace QLoRA.Runtime.Engine;

/// <summary>
/// What every block of one micro-batch shares: its token count, the packed sequences' cumulative boundaries (no
/// padding; attention never crosses a boundary), each token's position within its sequence and RoPE's frequencies.
/// </summary>
/// <param name="Tokens">Tokens of the micro-batch (≤ the engine's budget).</param>
/// <param name="Boundaries">0 = b₀ &lt; b₁ &lt; … &lt; bₙ = tokens.</param>
/// <param name="Positions">I32 [tokens] on the device.</param>
/// <param name="InverseFrequencies">F32 [head_dim / 2] on the device.</param>
/// <param name="SlidingWindow">Keys visible to a query (mistral), 0 for all earlier ones.</param>
/// <param name="Training">Whether LoRA dropout applies.</param>
internal sealed record BatchContext(int Tokens, int[] Boundaries, DeviceTensor Positions, DeviceTensor InverseFrequencies, int SlidingWindow, bool Training);
