using System.Globalization;
using System.Text;

namespace QLoRA.Text.Templates;

/// <summary>Python's <c>datetime.strftime</c> in the C locale (what <c>strftime_now</c> calls), including glibc's <c>%-d</c> flag.</summary>
internal static class PythonStrftime
{
    private static readonly string[] Days = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    private static readonly string[] Months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

    public static string Format(DateTime t, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%' || i + 1 >= format.Length)
            {
                sb.Append(c);
                continue;
            }
            char d = format[++i];
            bool noPad = false;
            if (d == '-' && i + 1 < format.Length)
            {
                noPad = true;
                d = format[++i];
            }
            string Num(int v, int width) => noPad ? v.ToString(CultureInfo.InvariantCulture) : v.ToString(CultureInfo.InvariantCulture).PadLeft(width, '0');
            switch (d)
            {
                case 'a': sb.Append(Days[(int)t.DayOfWeek][..3]); break;
                case 'A': sb.Append(Days[(int)t.DayOfWeek]); break;
                case 'b' or 'h': sb.Append(Months[t.Month - 1][..3]); break;
                case 'B': sb.Append(Months[t.Month - 1]); break;
                case 'd': sb.Append(Num(t.Day, 2)); break;
                case 'e': sb.Append(noPad ? t.Day.ToString(CultureInfo.InvariantCulture) : t.Day.ToString(CultureInfo.InvariantCulture).PadLeft(2, ' ')); break;
                case 'm': sb.Append(Num(t.Month, 2)); break;
                case 'y': sb.Append(Num(t.Year % 100, 2)); break;
                case 'Y': sb.Append(t.Year.ToString(CultureInfo.InvariantCulture)); break;
                case 'H': sb.Append(Num(t.Hour, 2)); break;
                case 'I': sb.Append(Num(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2)); break;
                case 'M': sb.Append(Num(t.Minute, 2)); break;
                case 'S': sb.Append(Num(t.Second, 2)); break;
                case 'f': sb.Append((t.Ticks % TimeSpan.TicksPerSecond / 10).ToString("D6", CultureInfo.InvariantCulture)); break;
                case 'p': sb.Append(t.Hour < 12 ? "AM" : "PM"); break;
                case 'j': sb.Append(Num(t.DayOfYear, 3)); break;
                case 'w': sb.Append((int)t.DayOfWeek); break;
                case 'u': sb.Append(t.DayOfWeek == DayOfWeek.Sunday ? 7 : (int)t.DayOfWeek); break;
                case 'z' or 'Z': break;   // naive datetime: empty, as Python
                case '%': sb.Append('%'); break;
                default: throw new NotSupportedException($"strftime directive '%{d}'");
            }
        }
        return sb.ToString();
    }
}
