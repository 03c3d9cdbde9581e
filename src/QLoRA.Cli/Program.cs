using QLoRA.Cli;

return QloraCli.Run(args, Console.Out, Console.Error, interactive: !Console.IsOutputRedirected);
